/* The paper's LRN (§3.3) on float32 activations stored pixel by pixel (channels_last: the C
 * channels of one pixel are contiguous), forward and backward.
 *
 *   b_i = a_i * d_i^-beta,   d_i = k + alpha * sum_{j in W(i)} a_j^2,   W(i) = i-before .. i-before+size-1
 *   dL/da_i = g_i * d_i^-beta - 2*alpha*beta * a_i * sum_{j : i in W(j)} g_j * a_j * d_j^(-beta-1)
 *
 * Each thread takes blocks of whole pixels (about BLOCK floats) and runs each step as one loop over
 * the block's floats, so the loops are long and vectorise whatever the channel count. A window sum
 * adds the values of its channels in increasing order and takes 0 for a channel outside the pixel
 * (a mask per window position, made once per call): the same additions, in the same order, as over
 * a zero-padded pixel. The paper's window (5) and beta (0.75, as 1/sqrt(d*sqrt(d))) get their own
 * unrolled loops; other values take the general ones. The forward also writes d^-beta (`scale`),
 * which the backward reads instead of computing its two square roots and a division again; d
 * itself, which takes only additions, is recomputed from a. Built once per machine by
 * core/native.py; core/lrn.py calls it through ctypes. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define BLOCK 256   /* floats of a block of whole pixels (one pixel where it has more channels) */
typedef float MASK;  /* 1 or 0; float masks ran faster here than bytes (AVX-512, 2 threads) */

typedef struct { int64_t c, size, before; float alpha, beta, k; } Shape;

static inline float inverse_power(float d, int paper, float beta) {
    return paper ? 1.0f / sqrtf(d * sqrtf(d)) : powf(d, -beta);
}

/* sum of v[f + lo + j], j = 0 .. size-1, over the j whose channel is in the pixel (keep[j][f]) */
static inline float window(const float *restrict v, const MASK *const *keep, int64_t f, int64_t lo, int64_t size) {
    float s = (lo == 0 || keep[0][f]) ? v[f + lo] : 0.0f;   /* offset 0, the channel itself, needs no mask */
    for (int64_t j = 1; j < size; j++) s += (j + lo == 0 || keep[j][f]) ? v[f + lo + j] : 0.0f;
    return s;
}

/* One block of n floats (whole pixels): the forward (g == NULL: out = b, s = d^-beta) or the
 * backward (s read, out = dL/da). sq and t have `size` floats of slack either side; fwd/bwd: the
 * masks of the window and of its mirror (j with i in W(j)). */
static inline void block(const float *restrict g, const float *restrict x, float *restrict out, int64_t n,
                         float *restrict sq, float *restrict t, float *restrict s, const MASK *const *fwd,
                         const MASK *const *bwd, Shape m, int64_t size, int64_t before, int paper) {
    const int64_t after = size - 1 - before;
    for (int64_t f = 0; f < n; f++) sq[f] = x[f] * x[f];
    if (g == NULL) {
        for (int64_t f = 0; f < n; f++) {
            s[f] = inverse_power(m.k + m.alpha * window(sq, fwd, f, -before, size), paper, m.beta);
            out[f] = x[f] * s[f];
        }
        return;
    }
    const float coef = 2.0f * m.alpha * m.beta;
    for (int64_t f = 0; f < n; f++) t[f] = g[f] * x[f] * s[f] / (m.k + m.alpha * window(sq, fwd, f, -before, size));
    for (int64_t f = 0; f < n; f++) out[f] = g[f] * s[f] - coef * x[f] * window(t, bwd, f, -after, size);
}

/* Returns 1 if a thread's buffers could not be allocated. */
static int run(const float *g, const float *a, float *scale, float *out, int64_t pixels, Shape m, int threads) {
    const int paper = m.beta == 0.75f, unrolled = m.size == 5 && m.before == 2 && paper;
    const int64_t per = m.c < BLOCK ? BLOCK / m.c : 1, len = per * m.c, blocks = (pixels + per - 1) / per;
    const int64_t after = m.size - 1 - m.before;
    int failed = 0;
    #pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        float *buf = (float *)calloc((size_t)(2 * (len + 2 * m.size)), sizeof(float));
        MASK *masks = (MASK *)malloc((size_t)(2 * m.size * len) * sizeof(MASK));
        const MASK **fwd = (const MASK **)malloc((size_t)(2 * m.size) * sizeof(MASK *)), **bwd = fwd ? fwd + m.size : NULL;
        failed = buf == NULL || masks == NULL || fwd == NULL;
        if (!failed) {
            for (int64_t j = 0; j < m.size; j++) {
                MASK *kf = masks + j * len, *kb = masks + (m.size + j) * len;
                for (int64_t f = 0; f < len; f++) {
                    const int64_t i = f % m.c, cf = i - m.before + j, cb = i - after + j;
                    kf[f] = cf >= 0 && cf < m.c;
                    kb[f] = cb >= 0 && cb < m.c;
                }
                fwd[j] = kf;
                bwd[j] = kb;
            }
        }
        float *sq = buf + m.size, *t = sq + len + 2 * m.size;
        #pragma omp for schedule(static)
        for (int64_t b = 0; b < blocks; b++) {
            if (failed) continue;
            const int64_t o = b * len, n = (b == blocks - 1 ? pixels - b * per : per) * m.c;
            const float *gb = g ? g + o : NULL;
            if (unrolled) block(gb, a + o, out + o, n, sq, t, scale + o, fwd, bwd, m, 5, 2, 1);
            else block(gb, a + o, out + o, n, sq, t, scale + o, fwd, bwd, m, m.size, m.before, paper);
        }
        free(buf);
        free(masks);
        free(fwd);
    }
    return failed;
}

/* out = b and scale = d^-beta, both laid out as a */
int lrn_forward(const float *a, float *out, float *scale, int64_t pixels, int64_t c, int64_t size,
                int64_t before, float alpha, float beta, float k, int threads) {
    return run(NULL, a, scale, out, pixels, (Shape){c, size, before, alpha, beta, k}, threads);
}

/* grad = dL/da, from g = dL/db, a and the forward's scale (only read) */
int lrn_backward(const float *g, const float *a, const float *scale, float *grad, int64_t pixels, int64_t c,
                 int64_t size, int64_t before, float alpha, float beta, float k, int threads) {
    return run(g, a, (float *)scale, grad, pixels, (Shape){c, size, before, alpha, beta, k}, threads);
}
