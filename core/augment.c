/* The paper's training crop (§4.1) of a uint8 batch with its mirror, lighting shift and input
 * scaling in one pass, written pixel by pixel (channels_last), for the CPU. Per output value, in
 * the order core/augment.py's torch ops use (so the floats are the same, bit for bit):
 *   t = (float) image[b, c, top + y, left + x'],   x' = x or S-1-x when mirrored
 *   t = t + shift[b, c]                             (lighting; skipped when shift is NULL)
 *   t = t - mean[c, top + y, left + x']             (paper scale), or (t - umean[c]) / ustd[c]
 * Built once per machine by core/native.py; core/augment.py calls it through ctypes. */
#include <stdint.h>

void crop_normalise(const uint8_t *image, const int64_t *offsets, const uint8_t *flips, const float *shift,
                    const float *mean, const float *umean, const float *ustd, float *out,
                    int64_t batch, int64_t channels, int64_t prep, int64_t size, int threads) {
    const int64_t plane = prep * prep;
    #pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
    for (int64_t b = 0; b < batch; b++) {
        for (int64_t y = 0; y < size; y++) {
            const int64_t row = (offsets[2 * b] + y) * prep, left = offsets[2 * b + 1];
            const uint8_t *src = image + b * channels * plane;
            float *dst = out + (b * size + y) * size * channels;
            for (int64_t x = 0; x < size; x++) {
                const int64_t col = left + (flips[b] ? size - 1 - x : x);
                for (int64_t c = 0; c < channels; c++) {
                    const int64_t at = c * plane + row + col;
                    float t = (float)src[at];
                    if (shift) t = t + shift[b * channels + c];
                    t = mean ? t - mean[at] : (t - umean[c]) / ustd[c];
                    dst[x * channels + c] = t;
                }
            }
        }
    }
}
