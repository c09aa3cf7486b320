/* The paper's LRN (§3.3) on float32 activations stored pixel by pixel (channels_last: the C
 * channels of one pixel are contiguous), forward and backward, one pass over each tensor.
 *
 *   b_i = a_i * d_i^-beta,   d_i = k + alpha * sum_{j in W(i)} a_j^2,   W(i) = i-before .. i-before+size-1
 *   dL/da_i = g_i * d_i^-beta - 2*alpha*beta * a_i * sum_{j : i in W(j)} g_j * a_j * d_j^(-beta-1)
 *
 * Each thread keeps one pixel's zero-padded squares (and, backward, g*a*d^(-beta-1)) in a small
 * buffer, so the window sums need no boundary tests and each loop over the channels vectorises.
 * The paper's window (5) and beta (0.75, as 1/sqrt(d*sqrt(d))) get their own unrolled loops; other
 * values take the general ones. d is recomputed in the backward from a (cheaper than storing it).
 * Built once per machine by core/native.py; core/lrn.py calls it through ctypes. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct { int64_t c, size, before; float alpha, beta, k; } Shape;

static inline float inverse_power(float d, int paper, float beta) {
    return paper ? 1.0f / sqrtf(d * sqrtf(d)) : powf(d, -beta);
}

/* window sum of buf[i .. i+size-1]; size is a constant where the callers pass 5 */
static inline float window(const float *restrict buf, int64_t i, int64_t size) {
    float s = buf[i];
    for (int64_t j = 1; j < size; j++) s += buf[i + j];
    return s;
}

static inline void forward_pixel(const float *restrict x, float *restrict y, float *restrict sq,
                                 Shape m, int64_t size, int paper) {
    for (int64_t i = 0; i < m.c; i++) sq[m.before + i] = x[i] * x[i];
    for (int64_t i = 0; i < m.c; i++)
        y[i] = x[i] * inverse_power(m.k + m.alpha * window(sq, i, size), paper, m.beta);
}

static inline void backward_pixel(const float *restrict g, const float *restrict x, float *restrict dx,
                                  float *restrict sq, float *restrict t, float *restrict s, Shape m,
                                  int64_t size, int paper) {
    const int64_t after = size - 1 - m.before;   /* the mirrored window: j with i in W(j) */
    const float coef = 2.0f * m.alpha * m.beta;
    for (int64_t i = 0; i < m.c; i++) sq[m.before + i] = x[i] * x[i];
    for (int64_t i = 0; i < m.c; i++) {
        float d = m.k + m.alpha * window(sq, i, size);
        s[i] = inverse_power(d, paper, m.beta);
        t[after + i] = g[i] * x[i] * s[i] / d;
    }
    for (int64_t i = 0; i < m.c; i++) dx[i] = g[i] * s[i] - coef * x[i] * window(t, i, size);
}

/* One pass over the pixels: the forward (g == NULL: out = b) or the backward (out = dL/da). Per
 * thread: two zero-padded buffers of c + size floats and one of c. Returns 1 if a buffer could not
 * be allocated. */
static int run(const float *g, const float *a, float *out, int64_t pixels, Shape m, int threads) {
    const int paper = m.beta == 0.75f, unrolled = m.size == 5 && paper;
    int failed = 0;
    #pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        float *sq = (float *)calloc((size_t)(3 * m.c + 2 * m.size), sizeof(float));
        failed = sq == NULL;
        float *t = sq ? sq + m.c + m.size : NULL, *s = t ? t + m.c + m.size : NULL;
        #pragma omp for schedule(static)
        for (int64_t p = 0; p < pixels; p++) {
            const int64_t o = p * m.c;
            if (!sq) continue;
            if (g == NULL && unrolled) forward_pixel(a + o, out + o, sq, m, 5, 1);
            else if (g == NULL) forward_pixel(a + o, out + o, sq, m, m.size, paper);
            else if (unrolled) backward_pixel(g + o, a + o, out + o, sq, t, s, m, 5, 1);
            else backward_pixel(g + o, a + o, out + o, sq, t, s, m, m.size, paper);
        }
        free(sq);
    }
    return failed;
}

int lrn_forward(const float *a, float *out, int64_t pixels, int64_t c, int64_t size, int64_t before,
                float alpha, float beta, float k, int threads) {
    return run(NULL, a, out, pixels, (Shape){c, size, before, alpha, beta, k}, threads);
}

int lrn_backward(const float *g, const float *a, float *grad, int64_t pixels, int64_t c, int64_t size,
                 int64_t before, float alpha, float beta, float k, int threads) {
    return run(g, a, grad, pixels, (Shape){c, size, before, alpha, beta, k}, threads);
}
