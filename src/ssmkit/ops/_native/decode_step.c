/* One decoding step of a Mamba or Mamba-2 layer for a batch of rows, everything between the
 * input projection and the output projection in one call (the two projections, large matrix
 * products, stay with the BLAS library). Plain C99, raw contiguous pointers, float32 and
 * float64 (the file includes itself once per scalar type, as selective_scan.c does).
 *
 * Mamba (per row, channel d < E, state size N, Δ rank R, conv width K):
 *     x, z   = xz[:E], xz[E:]                      (the in_proj output)
 *     u      = silu(bias_d + sum_{k<K-1} w_{d,k} win_{d,k} + w_{d,K-1} x_d),  win <- [win_{d,1:}, x_d]
 *     [δ, B, C] = W_x u                            (x_proj: R + 2N outputs)
 *     Δ_d    = softplus(W_Δ[d] · δ + b_Δ[d])
 *     h_{d,n} <- exp(Δ_d A_{d,n}) h_{d,n} + Δ_d u_d B_n
 *     y_d    = (sum_n h_{d,n} C_n + D_d u_d) silu(z_d)
 *
 * Mamba-2 (per row; H heads of P channels, E = H P; G groups of B, C with N entries each;
 * conv over the conv_dim = E + 2 G N channels of [x, B, C]):
 *     z, xBC, dt = zxbcdt[:E], zxbcdt[E:E+conv_dim], zxbcdt[E+conv_dim:]
 *     x, B, C = silu(conv step of xBC)              (window updated as above)
 *     Δ_h    = clamp(softplus(dt_h + dt_bias_h), lo, hi),  g = h / (H / G)
 *     s_{h,p,n} <- exp(Δ_h A_h) s_{h,p,n} + Δ_h x_{h,p} B_{g,n}
 *     y_{h,p} = sum_n s_{h,p,n} C_{g,n} + D_h x_{h,p}
 *     out    = w ⊙ RMSNorm_group(y ⊙ silu(z))     (or w ⊙ RMSNorm_group(y) ⊙ silu(z) if norm_before_gate)
 *
 * The state and the window may be updated in place (win_out == win_in, h_out == h_in): every
 * value is read before the same value is written. Layouts: xz (nb, 2E) with any strides (row, column); win (nb, C, K-1);
 * conv_w (C, K); x_proj_w (R + 2N, E); dt_proj_w (E, R); A (E, N) for Mamba, (H,) for Mamba-2;
 * Mamba's h (nb, E, N), Mamba-2's (nb, H, P, N); y (nb, E).
 */
#ifndef DEC_SCALAR

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <stdint.h>
#include "native_common.h"

/* y = x Wᵀ (+ bias) for a few rows x (nb, K) and a weight W (M, K), both row-major: every row of
 * W is read once for all rows of x (in tiles of 4 weight rows, see DEC_ROWS_LOOP), so the product streams the weight
 * at the memory bandwidth whatever nb is (a BLAS call with nb = 2..8 columns often repacks the
 * weight first, or runs at a fraction of that rate). A tile of JT weight rows times NR rows of x
 * keeps JT * NR independent float32 accumulators (enough to hide the latency of the fused
 * multiply-adds). The bfloat16 weight is widened to float32
 * as it is read (a bfloat16 number is the upper half of a float32). */

static inline float dec_bf16_to_f32(uint16_t v) {
    const uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t dec_f32_to_bf16(float f) {  /* round to nearest even; NaN stays NaN */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7f800000u) == 0x7f800000u) return (uint16_t)((u >> 16) | ((u & 0xffff) ? 0x40 : 0));
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
static inline __m256 dec_ld8_f32(const float *p) { return _mm256_loadu_ps(p); }
static inline __m256 dec_ld8_bf16(const uint16_t *p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
static inline float dec_hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#define DEC_TILE(NAME, WT, LD8, CVT)                                                              \
static inline __attribute__((always_inline)) void NAME(const WT *W, const float *x, long K, long j, \
                                                        long js, long b0, const int JT,            \
                                                        const int NR, float out[4][4]) {           \
    __m256 acc[4][4];                                                                              \
    for (int a = 0; a < JT; a++) for (int r = 0; r < NR; r++) acc[a][r] = _mm256_setzero_ps();     \
    long k = 0;                                                                                    \
    for (; k + 8 <= K; k += 8) {                                                                   \
        __m256 xv[4];                                                                              \
        for (int r = 0; r < NR; r++) xv[r] = _mm256_loadu_ps(x + (b0 + r) * K + k);                \
        for (int a = 0; a < JT; a++) {                                                             \
            const __m256 w = LD8(W + (j + a * js) * K + k);                                       \
            for (int r = 0; r < NR; r++) acc[a][r] = _mm256_fmadd_ps(w, xv[r], acc[a][r]);        \
        }                                                                                          \
    }                                                                                              \
    for (int a = 0; a < JT; a++)                                                                   \
        for (int r = 0; r < NR; r++) {                                                             \
            float t = dec_hsum8(acc[a][r]);                                                        \
            for (long kk = k; kk < K; kk++) t += CVT(W[(j + a * js) * K + kk]) * x[(b0 + r) * K + kk]; \
            out[a][r] = t;                                                                         \
        }                                                                                          \
}
#else
#define DEC_TILE(NAME, WT, LD8, CVT)                                                              \
static inline void NAME(const WT *W, const float *x, long K, long j, long js, long b0,            \
                        const int JT, const int NR, float out[4][4]) {                             \
    for (int a = 0; a < JT; a++)                                                                   \
        for (int r = 0; r < NR; r++) {                                                             \
            float t = 0;                                                                           \
            for (long k = 0; k < K; k++) t += CVT(W[(j + a * js) * K + k]) * x[(b0 + r) * K + k]; \
            out[a][r] = t;                                                                         \
        }                                                                                          \
}
#endif

static inline float dec_id(float v) { return v; }
DEC_TILE(dec_tile_f32, float, dec_ld8_f32, dec_id)
#if defined(__AVX2__) && defined(__FMA__)
/* bfloat16 weights, 16 at a time: one 256-bit load, widened by interleaving with zeros
 * (unpacklo/hi), which yields the elements in the order 0-3, 8-11 | 4-7, 12-15 of each block of 16;
 * x is stored in that order beforehand (dec_bf16_perm), so no shuffle is needed per weight. */
static inline __attribute__((always_inline)) void dec_tile_bf16(const uint16_t *W, const float *x, long K, long j,
                                                                 long js, long b0, const int JT, const int NR,
                                                                 float out[4][4]) {
    __m256 acc[4][4];
    const __m256i zero = _mm256_setzero_si256();
    for (int a = 0; a < JT; a++) for (int r = 0; r < NR; r++) acc[a][r] = _mm256_setzero_ps();
    long k = 0;
    for (; k + 16 <= K; k += 16) {
        __m256 xl[4], xh[4];
        for (int r = 0; r < NR; r++) { /* for NR > 2 loads the compiler may fold into the multiply-adds */
            xl[r] = _mm256_loadu_ps(x + (b0 + r) * K + k);
            xh[r] = _mm256_loadu_ps(x + (b0 + r) * K + k + 8);
        }
        if (NR <= 2) {
            for (int a = 0; a < JT; a++) {
                const __m256i w = _mm256_loadu_si256((const __m256i *)(W + (j + a * js) * K + k));
                const __m256 wl = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, w));
                const __m256 wh = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, w));
                for (int r = 0; r < NR; r++) {
                    acc[a][r] = _mm256_fmadd_ps(wl, xl[r], acc[a][r]);
                    acc[a][r] = _mm256_fmadd_ps(wh, xh[r], acc[a][r]);
                }
            }
        } else { /* 3-4 rows of x (JT <= 2): the widened weights stay in registers, x is read per row */
            __m256 wl[2], wh[2];
            for (int a = 0; a < JT; a++) {
                const __m256i w = _mm256_loadu_si256((const __m256i *)(W + (j + a * js) * K + k));
                wl[a] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, w));
                wh[a] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, w));
            }
            for (int r = 0; r < NR; r++)
                for (int a = 0; a < JT; a++) {
                    acc[a][r] = _mm256_fmadd_ps(wl[a], xl[r], acc[a][r]);
                    acc[a][r] = _mm256_fmadd_ps(wh[a], xh[r], acc[a][r]);
                }
        }
    }
    for (int a = 0; a < JT; a++)
        for (int r = 0; r < NR; r++) {
            float t = dec_hsum8(acc[a][r]);
            for (long kk = k; kk < K; kk++) t += dec_bf16_to_f32(W[(j + a * js) * K + kk]) * x[(b0 + r) * K + kk];
            out[a][r] = t;
        }
}
/* row of K floats -> the order the tile reads: per block of 16, elements 0-3, 8-11, 4-7, 12-15 */
static void dec_bf16_perm(float *x, long K) {
    float t[16];
    for (long k = 0; k + 16 <= K; k += 16) {
        for (int i = 0; i < 4; i++) {
            t[i] = x[k + i]; t[4 + i] = x[k + 8 + i]; t[8 + i] = x[k + 4 + i]; t[12 + i] = x[k + 12 + i];
        }
        memcpy(x + k, t, sizeof t);
    }
}
#else
DEC_TILE(dec_tile_bf16, uint16_t, dec_ld8_bf16, dec_bf16_to_f32)
static void dec_bf16_perm(float *x, long K) { (void)x; (void)K; }
#endif

/* The rows of W are split into nthreads contiguous ranges, one per thread. Inside a range of n
 * rows a tile takes S weight rows a fraction 1/S of the range apart (rows i, i + q, ..., q = n / S):
 * S long linear streams, which one core reads markedly faster than one (the hardware prefetcher
 * runs ahead on each; 14-17 against 8-10 GB/s for a bfloat16 product measured on an AVX2 AMD EPYC
 * core, see benchmarks/RESULTS.md), while adjacent rows are one stream. For 1-2 rows of x (or
 * rows longer than DEC_WIDE_K) S = 4, times 1 or 2 rows of x (at most 8 accumulators), and more
 * rows of x take further passes over the same weight rows; those passes do not overlap the
 * memory stream, so for 3 or more rows of length <= DEC_WIDE_K, S = 2 times up to 4 rows of x in
 * one pass (4 rows of x then stay in L1 beside the streams: at the 130m shapes' K = 768 a batch of
 * 4 ran 1.4x faster this way on an AVX-512 EPYC; at K = 1536 slower). The < S rows left over in a
 * range go one at a time. Each output row's sum is the same whatever the grouping, so the result
 * does not depend on nthreads or on nb. */
#define DEC_WIDE_K 1024
#define DEC_ROWS_LOOP(TILE, STORE_ROW)                                                             \
    const int nth = nthreads > 0 ? nthreads : 1;                                                   \
    const int wide = nb >= 3 && K <= DEC_WIDE_K;                                                   \
    const int S = wide ? 2 : 4, RP = wide ? 4 : 2; /* weight streams, rows of x per pass */       \
    long c;                                                                                        \
    _Pragma("omp parallel for schedule(static) num_threads(nth)")                                  \
    for (c = 0; c < nth; c++) {                                                                    \
        const long r0 = M * c / nth, r1 = M * (c + 1) / nth, q = (r1 - r0) / S;                    \
        for (long j = r0; j < r1; j++) {                                                           \
            if (j >= r0 + q && j < r0 + S * q) continue;   /* done as rows 2-S of a tile */       \
            const int jt = j < r0 + q ? S : 1;                                                     \
            const long js = jt > 1 ? q : 1;                                                        \
            for (long b0 = 0; b0 < nb; b0 += RP) {                                                 \
                const int nr = (int)(nb - b0 < RP ? nb - b0 : RP);                                 \
                float out[4][4];                                                                   \
                if (jt == 4 && nr == 2) TILE(W, x, K, j, js, b0, 4, 2, out);                       \
                else if (jt == 4) TILE(W, x, K, j, js, b0, 4, 1, out);                             \
                else if (jt == 2 && nr == 4) TILE(W, x, K, j, js, b0, 2, 4, out);                  \
                else if (jt == 2 && nr == 3) TILE(W, x, K, j, js, b0, 2, 3, out);                  \
                else if (jt == 2) TILE(W, x, K, j, js, b0, 2, nr, out);                            \
                else TILE(W, x, K, j, 1, b0, 1, nr, out);                                          \
                for (int a = 0; a < jt; a++)                                                       \
                    for (int r = 0; r < nr; r++)                                                   \
                        STORE_ROW((b0 + r) * M + j + a * js, out[a][r], j + a * js);               \
            }                                                                                      \
        }                                                                                          \
    }

int rows_matmul_f32(const float *x, const float *W, const float *bias, float *y, long nb, long M, long K,
                    int nthreads) {
#define STORE(i, v, jj) y[i] = (v) + (bias ? bias[jj] : 0.0f)
    DEC_ROWS_LOOP(dec_tile_f32, STORE)
#undef STORE
    return 0;
}

/* bfloat16 W and bias, x already widened to float32 and permuted (dec_bf16_perm): y as bfloat16
 * (yh) or, when yh is NULL, as float32 holding the same rounded values (yf). */
static void dec_rows_bf16w(const float *x, const uint16_t *W, const uint16_t *bias, uint16_t *yh, float *yf, long nb,
                           long M, long K, int nthreads) {
#define STORE(i, v, jj) do {                                                          \
        const uint16_t r_ = dec_f32_to_bf16((v) + (bias ? dec_bf16_to_f32(bias[jj]) : 0.0f)); \
        if (yh) yh[i] = r_; else yf[i] = dec_bf16_to_f32(r_);                          \
    } while (0)
    DEC_ROWS_LOOP(dec_tile_bf16, STORE)
#undef STORE
}

/* The same for bfloat16 x, W, bias and y (products accumulated in float32, the result rounded). */
int rows_matmul_bf16(const uint16_t *xh, const uint16_t *W, const uint16_t *bias, uint16_t *y, long nb, long M,
                     long K, int nthreads) {
    float *x = (float *)malloc((size_t)(nb * K) * sizeof(float));
    if (!x) return 1;
    for (long i = 0; i < nb * K; i++) x[i] = dec_bf16_to_f32(xh[i]);
    for (long b = 0; b < nb; b++) dec_bf16_perm(x + b * K, K);
    dec_rows_bf16w(x, W, bias, y, NULL, nb, M, K, nthreads);
    free(x);
    return 0;
}

/* float32 rows (n values) rounded to bfloat16 and permuted for dec_rows_bf16w: the input of a
 * bfloat16 projection, as torch would round it before a bfloat16 product. */
static void dec_round_perm(const float *src, float *dst, long nb, long K) {
    for (long i = 0; i < nb * K; i++) dst[i] = dec_bf16_to_f32(dec_f32_to_bf16(src[i]));
    for (long b = 0; b < nb; b++) dec_bf16_perm(dst + b * K, K);
}

/* The residual stream of a pre-norm block between two layers, for a few rows (nb, d):
 * r <- r + h (when h is given), out = w ⊙ r / sqrt(mean(r²) + eps). float32. */
void add_rms_norm_f32(const float *h, float *r, const float *w, float *out, long nb, long d, double eps) {
    for (long b = 0; b < nb; b++) {
        float *rb = r + b * d, *ob = out + b * d;
        if (h) {
            const float *hb = h + b * d;
            for (long i = 0; i < d; i++) rb[i] += hb[i];
        }
        float ss = 0;
        for (long i = 0; i < d; i++) ss += rb[i] * rb[i];
        const float scale = 1.0f / sqrtf(ss / (float)d + (float)eps);
        for (long i = 0; i < d; i++) ob[i] = w[i] * (rb[i] * scale);
    }
}

#define DEC_SCALAR float
#define DEC_SFX f32
#define DEC_IS_F32 1
#define DEC_EXP expf
#define DEC_LOG1P log1pf
#define DEC_SQRT sqrtf
#include __FILE__
#undef DEC_SCALAR
#undef DEC_SFX
#undef DEC_EXP
#undef DEC_LOG1P
#undef DEC_SQRT
#undef DEC_IS_F32

#define DEC_SCALAR double
#define DEC_SFX f64
#define DEC_IS_F32 0
#define DEC_EXP exp
#define DEC_LOG1P log1p
#define DEC_SQRT sqrt
#include __FILE__
#undef DEC_SCALAR
#undef DEC_SFX
#undef DEC_EXP
#undef DEC_LOG1P
#undef DEC_SQRT
#undef DEC_IS_F32

/* A whole layer's decoding step in float32, in_proj and out_proj included (one call per layer):
 * out (nb, Dm) = out_proj(step(in_proj(x))) for x (nb, Dm). nthreads splits the projections. */
int mamba_layer_step_f32(const float *x, const float *in_w, const float *in_b, const float *out_w,
                         const float *out_b, float *out, const float *win_in, float *win_out, const float *conv_w,
                         const float *conv_b, const float *x_proj_w, const float *dt_proj_w, const float *dt_proj_b,
                         const float *A, const float *Dv, const float *h_in, float *h_out, long nb, long Dm, long E,
                         long K, long R, long N, int nthreads) {
    float *xz = (float *)malloc((size_t)(nb * 3 * E) * sizeof(float));
    if (!xz) return 1;
    float *y = xz + nb * 2 * E;
    rows_matmul_f32(x, in_w, in_b, xz, nb, 2 * E, Dm, nthreads);
    int rc = mamba_step_f32(xz, 2 * E, 1, win_in, win_out, conv_w, conv_b, x_proj_w, dt_proj_w, dt_proj_b, A, Dv,
                            h_in, h_out, y, nb, E, K, R, N);
    if (!rc) rows_matmul_f32(y, out_w, out_b, out, nb, Dm, E, nthreads);
    free(xz);
    return rc;
}

int mamba2_layer_step_f32(const float *x, const float *in_w, const float *in_b, const float *out_w,
                          const float *out_b, float *out, const float *win_in, float *win_out, const float *conv_w,
                          const float *conv_b, const float *dt_bias, const float *A, const float *Dv,
                          const float *norm_w, const float *h_in, float *h_out, long nb, long Dm, long H, long P,
                          long G, long N, long K, double dt_lo, double dt_hi, double eps, int norm_before_gate,
                          int nthreads) {
    const long E = H * P, W = 2 * E + 2 * G * N + H;
    float *zx = (float *)malloc((size_t)(nb * (W + E)) * sizeof(float));
    if (!zx) return 1;
    float *y = zx + nb * W;
    rows_matmul_f32(x, in_w, in_b, zx, nb, W, Dm, nthreads);
    int rc = mamba2_step_f32(zx, W, 1, win_in, win_out, conv_w, conv_b, dt_bias, A, Dv, norm_w, h_in, h_out, y, nb,
                             H, P, G, N, K, dt_lo, dt_hi, eps, norm_before_gate);
    if (!rc) rows_matmul_f32(y, out_w, out_b, out, nb, Dm, E, nthreads);
    free(zx);
    return rc;
}

/* The layer steps with bfloat16 in_proj / out_proj weights (and biases), the small parameters
 * (conv, x_proj, dt_proj, A, D, norm) as float32 copies, the conv window in bfloat16 and the
 * SSM state in float32: the values are rounded to bfloat16 where a bfloat16 torch layer rounds
 * them (the projections' inputs and outputs), everything between them runs in float32. x and
 * out are float32 (nb, Dm) (the float32 residual stream of the released models). */
/* The frame around the step: rounds x and runs in_proj into proj (nb, Wp), widens the window
 * (nw values) into win; buf holds proj, y (nb, E) and the rounded copies. 1 if out of memory. */
typedef struct { float *buf, *win, *proj, *y; } dec_frame;

static int dec_bf16_open(dec_frame *f, const float *x, const uint16_t *in_w, const uint16_t *in_b,
                         const uint16_t *win_in, long nb, long Dm, long Wp, long E, long nw, int nthreads) {
    f->buf = (float *)malloc((size_t)(nb * (Dm + Wp + 2 * E)) * sizeof(float));
    f->win = (float *)malloc((size_t)(nw > 0 ? nw : 1) * sizeof(float));
    if (!f->buf || !f->win) { free(f->buf); free(f->win); return 1; }
    for (long i = 0; i < nw; i++) f->win[i] = dec_bf16_to_f32(win_in[i]);
    float *xr = f->buf;
    f->proj = xr + nb * Dm;
    f->y = f->proj + nb * Wp;
    dec_round_perm(x, xr, nb, Dm);
    dec_rows_bf16w(xr, in_w, in_b, NULL, f->proj, nb, Wp, Dm, nthreads);
    return 0;
}

/* After the step (rc its return code): the window back in bfloat16, out = out_proj(round(y)). */
static int dec_bf16_close(dec_frame *f, int rc, uint16_t *win_out, const uint16_t *out_w, const uint16_t *out_b,
                          float *out, long nb, long Dm, long E, long nw, int nthreads) {
    if (!rc) {
        for (long i = 0; i < nw; i++) win_out[i] = dec_f32_to_bf16(f->win[i]);
        float *yr = f->y + nb * E;
        dec_round_perm(f->y, yr, nb, E);
        dec_rows_bf16w(yr, out_w, out_b, NULL, out, nb, Dm, E, nthreads);
    }
    free(f->win);
    free(f->buf);
    return rc;
}

int mamba_layer_step_bf16(const float *x, const uint16_t *in_w, const uint16_t *in_b, const uint16_t *out_w,
                          const uint16_t *out_b, float *out, const uint16_t *win_in, uint16_t *win_out,
                          const float *conv_w, const float *conv_b, const float *x_proj_w, const float *dt_proj_w,
                          const float *dt_proj_b, const float *A, const float *Dv, const float *h_in, float *h_out,
                          long nb, long Dm, long E, long K, long R, long N, int nthreads) {
    const long nw = nb * E * (K - 1);
    dec_frame f;
    if (dec_bf16_open(&f, x, in_w, in_b, win_in, nb, Dm, 2 * E, E, nw, nthreads)) return 1;
    int rc = mamba_step_f32(f.proj, 2 * E, 1, f.win, f.win, conv_w, conv_b, x_proj_w, dt_proj_w, dt_proj_b, A, Dv,
                            h_in, h_out, f.y, nb, E, K, R, N);
    return dec_bf16_close(&f, rc, win_out, out_w, out_b, out, nb, Dm, E, nw, nthreads);
}

int mamba2_layer_step_bf16(const float *x, const uint16_t *in_w, const uint16_t *in_b, const uint16_t *out_w,
                           const uint16_t *out_b, float *out, const uint16_t *win_in, uint16_t *win_out,
                           const float *conv_w, const float *conv_b, const float *dt_bias, const float *A,
                           const float *Dv, const float *norm_w, const float *h_in, float *h_out, long nb, long Dm,
                           long H, long P, long G, long N, long K, double dt_lo, double dt_hi, double eps,
                           int norm_before_gate, int nthreads) {
    const long E = H * P, W = 2 * E + 2 * G * N + H, nw = nb * (E + 2 * G * N) * (K - 1);
    dec_frame f;
    if (dec_bf16_open(&f, x, in_w, in_b, win_in, nb, Dm, W, E, nw, nthreads)) return 1;
    int rc = mamba2_step_f32(f.proj, W, 1, f.win, f.win, conv_w, conv_b, dt_bias, A, Dv, norm_w, h_in, h_out, f.y,
                             nb, H, P, G, N, K, dt_lo, dt_hi, eps, norm_before_gate);
    return dec_bf16_close(&f, rc, win_out, out_w, out_b, out, nb, Dm, E, nw, nthreads);
}

/* A whole stack of pre-norm RMSNorm blocks around Mamba (or Mamba-2) layers, one decoding step
 * in one call: r (nb, Dm) is the float32 residual stream, on entry the embedded tokens, updated in
 * place; x = RMSNorm_0(r); for each layer l: r += layer_l(x), x = RMSNorm_{l+1}(r); out = x (the
 * last norm is the stack's final one). These are the calls the per-layer path makes, in the same
 * order, so the numbers are the same. T holds per layer the layer step's pointer operands (the
 * conv window and the SSM state are updated in place):
 *   Mamba (13):   in_w, in_b, out_w, out_b, win, conv_w, conv_b, x_proj_w, dt_proj_w, dt_proj_b, A, D, h
 *   Mamba-2 (12): in_w, in_b, out_w, out_b, win, conv_w, conv_b, dt_bias, A, D, norm_w, h
 * bf16: bfloat16 projection weights and window (mamba*_layer_step_bf16), else all float32.
 * norm_w: nl + 1 float32 RMSNorm weights, eps their epsilons. 1 if out of memory. */
typedef struct { float *x, *y; } dec_stack;

static int dec_stack_open(dec_stack *s, const float *const *norm_w, const double *eps, float *r, long nb, long Dm) {
    s->x = (float *)malloc((size_t)(2 * nb * Dm) * sizeof(float));
    if (!s->x) return 1;
    s->y = s->x + nb * Dm;
    add_rms_norm_f32(NULL, r, norm_w[0], s->x, nb, Dm, eps[0]);
    return 0;
}

static int dec_stack_close(dec_stack *s, int rc, float *out, long nb, long Dm) {
    if (!rc) memcpy(out, s->x, (size_t)(nb * Dm) * sizeof(float));
    free(s->x);
    return rc;
}

int mamba_stack_step(int bf16, long nl, void *const *T, const float *const *norm_w, const double *eps, float *r,
                     float *out, long nb, long Dm, long E, long K, long R, long N, int nthreads) {
    dec_stack s;
    if (dec_stack_open(&s, norm_w, eps, r, nb, Dm)) return 1;
    int rc = 0;
    for (long l = 0; l < nl && !rc; l++) {
        void *const *t = T + l * 13;
        if (bf16)
            rc = mamba_layer_step_bf16(s.x, t[0], t[1], t[2], t[3], s.y, t[4], t[4], t[5], t[6], t[7], t[8], t[9],
                                       t[10], t[11], t[12], t[12], nb, Dm, E, K, R, N, nthreads);
        else
            rc = mamba_layer_step_f32(s.x, t[0], t[1], t[2], t[3], s.y, t[4], t[4], t[5], t[6], t[7], t[8], t[9],
                                      t[10], t[11], t[12], t[12], nb, Dm, E, K, R, N, nthreads);
        if (!rc) add_rms_norm_f32(s.y, r, norm_w[l + 1], s.x, nb, Dm, eps[l + 1]);
    }
    return dec_stack_close(&s, rc, out, nb, Dm);
}

int mamba2_stack_step(int bf16, long nl, void *const *T, const float *const *norm_w, const double *eps, float *r,
                      float *out, long nb, long Dm, long H, long P, long G, long N, long K, double dt_lo,
                      double dt_hi, double norm_eps, int norm_before_gate, int nthreads) {
    dec_stack s;
    if (dec_stack_open(&s, norm_w, eps, r, nb, Dm)) return 1;
    int rc = 0;
    for (long l = 0; l < nl && !rc; l++) {
        void *const *t = T + l * 12;
        if (bf16)
            rc = mamba2_layer_step_bf16(s.x, t[0], t[1], t[2], t[3], s.y, t[4], t[4], t[5], t[6], t[7], t[8], t[9],
                                        t[10], t[11], t[11], nb, Dm, H, P, G, N, K, dt_lo, dt_hi, norm_eps,
                                        norm_before_gate, nthreads);
        else
            rc = mamba2_layer_step_f32(s.x, t[0], t[1], t[2], t[3], s.y, t[4], t[4], t[5], t[6], t[7], t[8], t[9],
                                       t[10], t[11], t[11], nb, Dm, H, P, G, N, K, dt_lo, dt_hi, norm_eps,
                                       norm_before_gate, nthreads);
        if (!rc) add_rms_norm_f32(s.y, r, norm_w[l + 1], s.x, nb, Dm, eps[l + 1]);
    }
    return dec_stack_close(&s, rc, out, nb, Dm);
}

#else /* template body */

#define DEC_CAT2(a, b) a##_##b
#define DEC_CAT(a, b) DEC_CAT2(a, b)
#define S DEC_SCALAR
#define F(name) DEC_CAT(name, DEC_SFX)

static inline S F(dec_silu)(S v) { return v / ((S)1 + DEC_EXP(-SSM_SIG_ARG(v, S))); }

/* torch.nn.functional.softplus with beta 1, threshold 20 */
static inline S F(dec_softplus)(S v) { return v > (S)20 ? v : DEC_LOG1P(DEC_EXP(v)); }

/* One conv step over C channels of one row: out_c = silu(conv), window shifted by one. */
static void F(dec_conv)(const S *x, long xs, const S *win_in, S *win_out, const S *w, const S *bias, S *out,
                        long C, long K) {
    const long K1 = K - 1;
    for (long c = 0; c < C; c++) {
        const S *wi = win_in + c * K1, *wc = w + c * K;
        S *wo = win_out + c * K1;
        S acc = bias ? bias[c] : (S)0;
        for (long k = 0; k < K1; k++) acc += wc[k] * wi[k];
        const S xc = x[c * xs];
        acc += wc[K1] * xc;
        for (long k = 0; k + 1 < K1; k++) wo[k] = wi[k + 1];  /* reads ahead of writes: in place is safe */
        if (K1 > 0) wo[K1 - 1] = xc;
        out[c] = acc;
    }
    for (long c = 0; c < C; c++) out[c] = F(dec_silu)(out[c]);  /* a separate loop: vectorised */
}

/* y (nb, M) = x (nb, K) Wᵀ (+ bias): float32 through the tiled kernel (the weight read once for
 * all rows), float64 by plain loops (the weight row outermost, so it is read once too). */
static void F(dec_rows)(const S *x, const S *W, const S *bias, S *y, long nb, long M, long K) {
#if DEC_IS_F32
    rows_matmul_f32(x, W, bias, y, nb, M, K, 1);
#else
    for (long j = 0; j < M; j++)
        for (long b = 0; b < nb; b++) {
            const S *xb = x + b * K, *wj = W + j * K;
            S acc = 0;
            for (long k = 0; k < K; k++) acc += wj[k] * xb[k];
            y[b * M + j] = acc + (bias ? bias[j] : (S)0);
        }
#endif
}

int F(mamba_step)(const S *xz, long xz_row, long xz_col, const S *win_in, S *win_out, const S *conv_w, const S *conv_b,
                  const S *x_proj_w, const S *dt_proj_w, const S *dt_proj_b, const S *A, const S *Dv,
                  const S *h_in, S *h_out, S *y, long nb, long E, long K, long R, long N) {
    const long J = R + 2 * N;
    /* per row: u (E), Δ (E), [δ, B, C] (J), δ again contiguous (R); silu(z) (E) */
    S *buf = (S *)malloc((size_t)(nb * (3 * E + J + R)) * sizeof(S));
    if (!buf) return 1;
    S *u = buf, *dt = buf + nb * E, *dbc = buf + 2 * nb * E, *low = dbc + nb * J, *gate = low + nb * R;
    for (long b = 0; b < nb; b++)  /* conv step */
        F(dec_conv)(xz + b * xz_row, xz_col, win_in + b * E * (K - 1), win_out + b * E * (K - 1), conv_w, conv_b,
                    u + b * E, E, K);
    F(dec_rows)(u, x_proj_w, NULL, dbc, nb, J, E);  /* x_proj, every weight read once for all rows */
    for (long b = 0; b < nb; b++) memcpy(low + b * R, dbc + b * J, (size_t)R * sizeof(S));
    F(dec_rows)(low, dt_proj_w, dt_proj_b, dt, nb, E, R);  /* dt_proj */
    for (long i = 0; i < nb * E; i++) dt[i] = F(dec_softplus)(dt[i]);
    for (long b = 0; b < nb; b++) {
        const S *zr = xz + b * xz_row + E * xz_col;
        S *gb = gate + b * E;
        for (long d = 0; d < E; d++) gb[d] = zr[d * xz_col];
        for (long d = 0; d < E; d++) gb[d] = F(dec_silu)(gb[d]);
    }
    for (long b = 0; b < nb; b++) {
        const S *ub = u + b * E, *db = dt + b * E, *gb = gate + b * E;
        const S *Bv = dbc + b * J + R, *Cv = Bv + N;
        const S *hi = h_in + b * E * N;
        S *ho = h_out + b * E * N, *yr = y + b * E;
        for (long d = 0; d < E; d++) {  /* state update, readout, skip, gate */
            const S dd = db[d], du = dd * ub[d];
            const S *Ad = A + d * N, *hd = hi + d * N;
            S *od = ho + d * N;
            S acc = 0;
            for (long n = 0; n < N; n++) {
                const S hn = DEC_EXP(dd * Ad[n]) * hd[n] + du * Bv[n];
                od[n] = hn;
                acc += hn * Cv[n];
            }
            yr[d] = (acc + Dv[d] * ub[d]) * gb[d];
        }
    }
    free(buf);
    return 0;
}

int F(mamba2_step)(const S *zxbcdt, long zx_row, long zx_col, const S *win_in, S *win_out, const S *conv_w, const S *conv_b,
                   const S *dt_bias, const S *A, const S *Dv, const S *norm_w, const S *h_in, S *h_out, S *y,
                   long nb, long H, long P, long G, long N, long K, double dt_lo_, double dt_hi_, double eps_,
                   int norm_before_gate) {
    const long E = H * P, CD = E + 2 * G * N, R = H / G, gs = E / G;
    const S dt_lo = (S)dt_lo_, dt_hi = (S)dt_hi_, eps = (S)eps_;
    S *xbc = (S *)malloc((size_t)CD * sizeof(S));
    if (!xbc) return 1;
    for (long b = 0; b < nb; b++) {
        const S *zr = zxbcdt + b * zx_row, *xr = zr + E * zx_col, *dtr = zr + (E + CD) * zx_col;
        F(dec_conv)(xr, zx_col, win_in + b * CD * (K - 1), win_out + b * CD * (K - 1), conv_w, conv_b, xbc, CD, K);
        const S *xs = xbc, *Bg = xbc + E, *Cg = xbc + E + G * N;
        const S *hi = h_in + b * E * N;
        S *ho = h_out + b * E * N, *yr = y + b * E;
        for (long h = 0; h < H; h++) {
            S dd = F(dec_softplus)(dtr[h * zx_col] + dt_bias[h]);
            dd = dd < dt_lo ? dt_lo : (dd > dt_hi ? dt_hi : dd);
            const S dA = DEC_EXP(dd * A[h]);
            const S *Bv = Bg + (h / R) * N, *Cv = Cg + (h / R) * N;
            for (long p = 0; p < P; p++) {
                const long c = h * P + p;
                const S dx = dd * xs[c];
                const S *sp = hi + c * N;
                S *op = ho + c * N;
                S acc = 0;
                for (long n = 0; n < N; n++) {
                    const S sn = dA * sp[n] + dx * Bv[n];
                    op[n] = sn;
                    acc += sn * Cv[n];
                }
                yr[c] = acc + Dv[h] * xs[c];
            }
        }
        for (long g = 0; g < G; g++) {  /* gated RMSNorm per group */
            S *yg = yr + g * gs;
            const S *zg = zr + g * gs * zx_col, *wg = norm_w + g * gs;
            S ss = 0;
            if (!norm_before_gate)
                for (long i = 0; i < gs; i++) yg[i] *= F(dec_silu)(zg[i * zx_col]);
            for (long i = 0; i < gs; i++) ss += yg[i] * yg[i];
            const S scale = (S)1 / DEC_SQRT(ss / (S)gs + eps);
            if (norm_before_gate)
                for (long i = 0; i < gs; i++) yg[i] = wg[i] * (yg[i] * scale * F(dec_silu)(zg[i * zx_col]));
            else
                for (long i = 0; i < gs; i++) yg[i] = wg[i] * (yg[i] * scale);
        }
    }
    free(xbc);
    return 0;
}

#undef F
#undef S
#undef DEC_CAT
#undef DEC_CAT2

#endif
