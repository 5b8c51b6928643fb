/* Causal convolution along the length of (B, L, H) tensors, computed directly, O(L Lk) per
 * channel: for short sequences (a few hundred steps) it is cheaper than the FFT route and needs
 * no transpose, since the channels are the contiguous dimension.
 *     y[b,t,h]  = sum_{j <= min(t, Lk-1)} K[j,h] u[b,t-j,h]                  (forward)
 *     gu[b,s,h] = sum_{j < Lk, s+j < L}   K[j,h] gy[b,s+j,h]                 (gradient of u)
 *     gK[j,h]   = sum_b sum_{t=j}^{L-1}   gy[b,t,h] u[b,t-j,h]               (gradient of K)
 * K is given as (Lk, H): the kernel transposed, channels contiguous. float32, contiguous.
 * The gradient of u is the forward convolution run backwards in time (a negative time stride).
 * Vectorised over channels (8 per AVX register), register-blocked over 4 time steps (or 4 taps)
 * and 2 registers of channels: 8 accumulators. Threads split the batch (forward, gu) or the
 * channels (gK); every sum is taken in one fixed order (taps, or batch then time, increasing),
 * so the results do not depend on the number of threads. */
#include <stddef.h>

#include "native_common.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

/* out[t] = sum_j K[j] in[t - j] for the NV * 8 channels at h, every t < L; element (t, h) of in
 * and out sits at t * ts + h (ts = H forwards, -H backwards from the last row). */
static inline __attribute__((always_inline)) void dc_causal_block(const float *in, const float *K, float *out,
                                                                   long L, long Lk, long H, long ts, long h,
                                                                   const int NV) {
    long t0 = 0;
    for (; t0 + 4 <= L; t0 += 4) {
        __m256 a[4][2];
        for (int i = 0; i < 4; i++) for (int v = 0; v < NV; v++) a[i][v] = _mm256_setzero_ps();
        const long jf = t0 < Lk - 1 ? t0 : Lk - 1;  /* taps every one of the 4 outputs has */
        for (long j = 0; j <= jf; j++) {
            __m256 k[2];
            for (int v = 0; v < NV; v++) k[v] = _mm256_loadu_ps(K + j * H + h + 8 * v);
            for (int i = 0; i < 4; i++) {
                const float *r = in + (t0 + i - j) * ts + h;
                for (int v = 0; v < NV; v++) a[i][v] = _mm256_fmadd_ps(k[v], _mm256_loadu_ps(r + 8 * v), a[i][v]);
            }
        }
        for (long j = jf + 1; j < Lk && j <= t0 + 3; j++) {  /* the first steps: output i has tap j if j <= t0 + i */
            __m256 k[2];
            for (int v = 0; v < NV; v++) k[v] = _mm256_loadu_ps(K + j * H + h + 8 * v);
            for (int i = 0; i < 4; i++) {
                if (t0 + i < j) continue;
                const float *r = in + (t0 + i - j) * ts + h;
                for (int v = 0; v < NV; v++) a[i][v] = _mm256_fmadd_ps(k[v], _mm256_loadu_ps(r + 8 * v), a[i][v]);
            }
        }
        for (int i = 0; i < 4; i++)
            for (int v = 0; v < NV; v++) _mm256_storeu_ps(out + (t0 + i) * ts + h + 8 * v, a[i][v]);
    }
    for (; t0 < L; t0++) {  /* the last < 4 steps, one at a time, taps in the same order */
        __m256 a[2];
        for (int v = 0; v < NV; v++) a[v] = _mm256_setzero_ps();
        for (long j = 0; j < Lk && j <= t0; j++) {
            const float *r = in + (t0 - j) * ts + h;
            for (int v = 0; v < NV; v++)
                a[v] = _mm256_fmadd_ps(_mm256_loadu_ps(K + j * H + h + 8 * v), _mm256_loadu_ps(r + 8 * v), a[v]);
        }
        for (int v = 0; v < NV; v++) _mm256_storeu_ps(out + t0 * ts + h + 8 * v, a[v]);
    }
}

/* gK[j] += sum_t gy[t] u[t - j] over one batch row (gy, u: (L, H) at channel h) for the taps
 * j0 .. j0 + NJ - 1 and the NV * 8 channels at h: the running sums are loaded from gK and stored
 * back, so the batch rows add up in order. */
static inline __attribute__((always_inline)) void dc_taps_block(const float *g, const float *x, float *gK, long L,
                                                                 long H, long j0, long h, const int NJ,
                                                                 const int NV) {
    __m256 a[4][2];
    for (int i = 0; i < NJ; i++) for (int v = 0; v < NV; v++) a[i][v] = _mm256_loadu_ps(gK + (j0 + i) * H + h + 8 * v);
    long t = j0;
    for (; t < L && t < j0 + NJ - 1; t++) {  /* the first steps: tap j0 + i needs t >= j0 + i */
        for (int i = 0; i < NJ && j0 + i <= t; i++) {
            const float *r = x + (t - j0 - i) * H + h;
            for (int v = 0; v < NV; v++)
                a[i][v] = _mm256_fmadd_ps(_mm256_loadu_ps(g + t * H + h + 8 * v), _mm256_loadu_ps(r + 8 * v), a[i][v]);
        }
    }
    for (; t < L; t++) {
        __m256 gv[2];
        for (int v = 0; v < NV; v++) gv[v] = _mm256_loadu_ps(g + t * H + h + 8 * v);
        for (int i = 0; i < NJ; i++) {
            const float *r = x + (t - j0 - i) * H + h;
            for (int v = 0; v < NV; v++) a[i][v] = _mm256_fmadd_ps(gv[v], _mm256_loadu_ps(r + 8 * v), a[i][v]);
        }
    }
    for (int i = 0; i < NJ; i++)
        for (int v = 0; v < NV; v++) _mm256_storeu_ps(gK + (j0 + i) * H + h + 8 * v, a[i][v]);
}

/* every tap of the NV * 8 channels at h over one batch row */
static inline __attribute__((always_inline)) void dc_taps_row(const float *g, const float *x, float *gK, long L,
                                                               long Lk, long H, long h, const int NV) {
    long j0 = 0;
    for (; j0 + 4 <= Lk; j0 += 4) dc_taps_block(g, x, gK, L, H, j0, h, 4, NV);
    for (; j0 < Lk; j0++) dc_taps_block(g, x, gK, L, H, j0, h, 1, NV);
}
#define DC_VEC 1
#else
#define DC_VEC 0
#endif

/* channels from h on (the ones the vector blocks leave), one at a time */
static void dc_causal_scalar(const float *in, const float *K, float *out, long L, long Lk, long H, long ts, long h0) {
    for (long h = h0; h < H; h++)
        for (long t = 0; t < L; t++) {
            float a = 0;
            for (long j = 0; j < Lk && j <= t; j++) a += K[j * H + h] * in[(t - j) * ts + h];
            out[t * ts + h] = a;
        }
}

static void dc_causal_row(const float *in, const float *K, float *out, long L, long Lk, long H, long ts) {
    long h = 0;
#if DC_VEC
    for (; h + 16 <= H; h += 16) dc_causal_block(in, K, out, L, Lk, H, ts, h, 2);
    for (; h + 8 <= H; h += 8) dc_causal_block(in, K, out, L, Lk, H, ts, h, 1);
#endif
    dc_causal_scalar(in, K, out, L, Lk, H, ts, h);
}

/* y (B, L, H) = causal convolution of u (B, L, H) with K (Lk, H), 1 <= Lk <= L */
void dconv_fwd_f32(const float *u, const float *K, float *y, long B, long L, long Lk, long H, int nthreads) {
    long b;
    const int nth = nthreads > 0 ? nthreads : 1;
#pragma omp parallel for schedule(static) num_threads(nth)
    for (b = 0; b < B; b++) dc_causal_row(u + b * L * H, K, y + b * L * H, L, Lk, H, H);
}

/* gu (B, L, H) and gK (Lk, H) from gy (B, L, H); either output may be NULL (not wanted) */
void dconv_bwd_f32(const float *gy, const float *u, const float *K, float *gu, float *gK, long B, long L, long Lk,
                   long H, int nthreads) {
    const int nth = nthreads > 0 ? nthreads : 1;
    if (gu) {
        long b;
#pragma omp parallel for schedule(static) num_threads(nth)
        for (b = 0; b < B; b++)  /* gu[s] = sum_j K[j] gy[s + j]: the causal sum in reversed time */
            dc_causal_row(gy + b * L * H + (L - 1) * H, K, gu + b * L * H + (L - 1) * H, L, Lk, H, -H);
    }
    if (gK) {
        /* threads split the channels; per block of channels, the batch rows in order and for
         * each all the taps, while the row's (L, 16) slices of gy and u stay in L1 */
        const long nvec = DC_VEC ? H / 8 : 0, nunit = (nvec + 1) / 2 + (H - 8 * nvec);
        long w;
#pragma omp parallel for schedule(static) num_threads(nth)
        for (w = 0; w < nunit; w++) {
            /* unit w: a block of 16 channels, the last one of 8, or one channel of the scalar tail */
            const long nb16 = nvec / 2, h = w < nb16 ? 16 * w : (w == nb16 && nvec % 2 ? 16 * nb16 : 8 * nvec + (w - (nvec + 1) / 2));
            const int width = w < nb16 ? 16 : (w == nb16 && nvec % 2 ? 8 : 1);
            for (long j = 0; j < Lk; j++)
                for (int c = 0; c < width; c++) gK[j * H + h + c] = 0;
            for (long b = 0; b < B; b++) {
                const float *g = gy + b * L * H, *x = u + b * L * H;
#if DC_VEC
                if (width == 16) { dc_taps_row(g, x, gK, L, Lk, H, h, 2); continue; }
                if (width == 8) { dc_taps_row(g, x, gK, L, Lk, H, h, 1); continue; }
#endif
                for (long j = 0; j < Lk; j++) {
                    float a = gK[j * H + h];
                    for (long t = j; t < L; t++) a += g[t * H + h] * x[(t - j) * H + h];
                    gK[j * H + h] = a;
                }
            }
        }
    }
}
