/* LayerNorm over the last dimension (Ba, Kiros & Hinton 2016), forward and backward, float32.
 * For rows x (R, H), weight w (H,) and bias b (H,) (either may be absent: 1 and 0):
 *     mean = sum_j x_j / H,   rstd = 1 / sqrt(sum_j (x_j - mean)^2 / H + eps)
 *     xh = (x - mean) rstd,   y = xh w + b                                         (forward)
 *     gxh = gy w,   gx = rstd (gxh - mean_j(gxh) - xh mean_j(gxh xh))
 *     gw = sum_rows gy xh,   gb = sum_rows gy                                       (backward)
 * The forward keeps mean and rstd (R values each) for the backward, as torch's does.
 * torch's CPU LayerNorm at H = 64 takes about 0.7 ns an element, most of it per-row overhead;
 * here a row is a few vector operations (near the memory rate: 0.10 ms forward for 6272 rows of 64).
 * Determinism: the backward's gw, gb sums are taken per block of LN_ROWS rows (a number that
 * does not depend on the thread count) into the block's own slot, and the slots are added in
 * block order, so the results are bit-identical for any number of threads.
 * Contiguous operands; the two passes over a row (moments, then the output) read it from L1. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "native_common.h"

#define LN_ROWS 64 /* rows per block of the backward's partial sums */

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LN_VEC 1
static inline float ln_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#else
#define LN_VEC 0
#endif

/* inf or NaN, read from the bits (-ffast-math lets the compiler assume isinf and isnan false) */
static inline int ln_not_finite(float v) {
    unsigned int bits;
    memcpy(&bits, &v, sizeof bits);
    return (bits & 0x7f800000u) == 0x7f800000u;
}

/* the row's mean and 1 / sqrt(variance + eps), the variance from a second pass (no cancellation).
 * Squares of values past 1.8e19 overflow float32 (sums of values past 5e36 too), and under
 * -ffast-math 1 / sqrt(inf) is NaN: a sum that came out inf or NaN (read from its bits, which
 * -ffast-math cannot assume away) is taken again in double. */
static inline void ln_moments(const float *x, long H, float eps, float *mean, float *rstd) {
    long j = 0;
    float s = 0.0f, v = 0.0f;
#if LN_VEC
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; j + 16 <= H; j += 16) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(x + j));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(x + j + 8));
    }
    for (; j + 8 <= H; j += 8) a0 = _mm256_add_ps(a0, _mm256_loadu_ps(x + j));
    s = ln_hsum(_mm256_add_ps(a0, a1));
#endif
    for (; j < H; j++) s += x[j];
    float m = s / (float)H;
    if (ln_not_finite(s)) { /* the float32 sum overflowed (or x holds inf/NaN) */
        double sd = 0.0;
        for (j = 0; j < H; j++) sd += (double)x[j];
        m = (float)(sd / (double)H);
    }
    j = 0;
#if LN_VEC
    const __m256 mv = _mm256_set1_ps(m);
    a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; j + 16 <= H; j += 16) {
        const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + j), mv), d1 = _mm256_sub_ps(_mm256_loadu_ps(x + j + 8), mv);
        a0 = _mm256_fmadd_ps(d0, d0, a0);
        a1 = _mm256_fmadd_ps(d1, d1, a1);
    }
    for (; j + 8 <= H; j += 8) {
        const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + j), mv);
        a0 = _mm256_fmadd_ps(d0, d0, a0);
    }
    v = ln_hsum(_mm256_add_ps(a0, a1));
#endif
    for (; j < H; j++) {
        const float d = x[j] - m;
        v += d * d;
    }
    *mean = m;
    if (!ln_not_finite(v)) {
        *rstd = 1.0f / sqrtf(v / (float)H + eps);
        return;
    }
    double vd = 0.0;
    for (j = 0; j < H; j++) {
        const double d = (double)x[j] - (double)m;
        vd += d * d;
    }
    *rstd = (float)(1.0 / sqrt(vd / (double)H + (double)eps));
}

/* y (R, H) = LayerNorm(x); mean, rstd (R,) receive the row statistics when given (NULL: not kept);
 * w, b may be NULL */
void ln_fwd_f32(const float *x, const float *w, const float *b, float *y, float *mean, float *rstd, long R, long H,
                double eps, int nthreads) {
    const int nth = nthreads > 0 ? nthreads : 1;
    const float e = (float)eps;
#pragma omp parallel for schedule(static) num_threads(nth)
    for (long r = 0; r < R; r++) {
        const float *xr = x + r * H;
        float *yr = y + r * H;
        float m, rs;
        ln_moments(xr, H, e, &m, &rs);
        if (mean) mean[r] = m;
        if (rstd) rstd[r] = rs;
        for (long j = 0; j < H; j++) {
            const float sw = w ? rs * w[j] : rs;
            yr[j] = (xr[j] - m) * sw + (b ? b[j] : 0.0f);
        }
    }
}

long ln_blocks(long R) { return (R + LN_ROWS - 1) / LN_ROWS; }

/* From gy, x (R, H) and the forward's mean, rstd: gx (R, H) if given, plus gres (R, H) if given
 * (the gradient x receives by another path, e.g. a block's residual: added in the same pass);
 * gw, gb (H,) if given, by way of part (ln_blocks(R) x 2H floats, the blocks' partial sums;
 * needed when gw or gb is). w may be NULL (no weight: gxh = gy). Returns 0. */
int ln_bwd_f32(const float *gy, const float *x, const float *mean, const float *rstd, const float *w,
               const float *gres, float *gx, float *gw, float *gb, float *part, long R, long H, int nthreads) {
    const int nth = nthreads > 0 ? nthreads : 1;
    const long nblk = ln_blocks(R);
    const int sums = gw != NULL || gb != NULL;
#pragma omp parallel for schedule(static) num_threads(nth)
    for (long blk = 0; blk < nblk; blk++) {
        const long r0 = blk * LN_ROWS, r1 = r0 + LN_ROWS < R ? r0 + LN_ROWS : R;
        float *pw = sums ? part + blk * 2 * H : NULL, *pb = sums ? part + blk * 2 * H + H : NULL;
        if (sums) memset(pw, 0, (size_t)(2 * H) * sizeof(float));
        for (long r = r0; r < r1; r++) {
            const float *xr = x + r * H, *gr = gy + r * H;
            const float m = mean[r], rs = rstd[r];
            if (sums)
                for (long j = 0; j < H; j++) {
                    pw[j] += gr[j] * (xr[j] - m) * rs;
                    pb[j] += gr[j];
                }
            if (!gx) continue;
            float c1 = 0.0f, c2 = 0.0f;
            if (w)
                for (long j = 0; j < H; j++) {
                    const float gh = gr[j] * w[j];
                    c1 += gh;
                    c2 += gh * (xr[j] - m);
                }
            else
                for (long j = 0; j < H; j++) {
                    c1 += gr[j];
                    c2 += gr[j] * (xr[j] - m);
                }
            c1 /= (float)H;
            c2 *= rs / (float)H; /* mean_j(gxh xh) */
            float *o = gx + r * H;
            const float *q = gres ? gres + r * H : NULL;
            if (w && q)
                for (long j = 0; j < H; j++) o[j] = q[j] + rs * (gr[j] * w[j] - c1 - (xr[j] - m) * rs * c2);
            else if (w)
                for (long j = 0; j < H; j++) o[j] = rs * (gr[j] * w[j] - c1 - (xr[j] - m) * rs * c2);
            else if (q)
                for (long j = 0; j < H; j++) o[j] = q[j] + rs * (gr[j] - c1 - (xr[j] - m) * rs * c2);
            else
                for (long j = 0; j < H; j++) o[j] = rs * (gr[j] - c1 - (xr[j] - m) * rs * c2);
        }
    }
    if (sums) {
        if (gw) memset(gw, 0, (size_t)H * sizeof(float));
        if (gb) memset(gb, 0, (size_t)H * sizeof(float));
        for (long blk = 0; blk < nblk; blk++) {
            const float *pw = part + blk * 2 * H, *pb = pw + H;
            if (gw)
                for (long j = 0; j < H; j++) gw[j] += pw[j];
            if (gb)
                for (long j = 0; j < H; j++) gb[j] += pb[j];
        }
    }
    return 0;
}
