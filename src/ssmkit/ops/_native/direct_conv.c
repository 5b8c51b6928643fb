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
#include <stdlib.h>

#include "native_common.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

/* out[t] = sum_j K[j] in[t - j] for NV * 8 channels, every t < L: element (t, c) of in sits at
 * in + t * is + c, tap (j, c) at K + j * ks + c, output (t, c) at out + t * os + c (os = -H runs
 * backwards from the last row). The caller packs in and K contiguously (is = ks = NV * 8): rows
 * H floats apart would fall into a fraction of L1's sets (all of them for H = 64 into a quarter). */
static inline __attribute__((always_inline)) void dc_causal_block(const float *in, long is, const float *K, long ks,
                                                                   float *out, long os, long L, long Lk,
                                                                   const int NV) {
    long t0 = 0;
    for (; t0 + 4 <= L; t0 += 4) {
        __m256 a[4][2];
        for (int i = 0; i < 4; i++) for (int v = 0; v < NV; v++) a[i][v] = _mm256_setzero_ps();
        const long jf = t0 < Lk - 1 ? t0 : Lk - 1;  /* taps every one of the 4 outputs has */
        for (long j = 0; j <= jf; j++) {
            __m256 k[2];
            for (int v = 0; v < NV; v++) k[v] = _mm256_loadu_ps(K + j * ks + 8 * v);
            for (int i = 0; i < 4; i++) {
                const float *r = in + (t0 + i - j) * is;
                for (int v = 0; v < NV; v++) a[i][v] = _mm256_fmadd_ps(k[v], _mm256_loadu_ps(r + 8 * v), a[i][v]);
            }
        }
        for (long j = jf + 1; j < Lk && j <= t0 + 3; j++) {  /* the first steps: output i has tap j if j <= t0 + i */
            __m256 k[2];
            for (int v = 0; v < NV; v++) k[v] = _mm256_loadu_ps(K + j * ks + 8 * v);
            for (int i = 0; i < 4; i++) {
                if (t0 + i < j) continue;
                const float *r = in + (t0 + i - j) * is;
                for (int v = 0; v < NV; v++) a[i][v] = _mm256_fmadd_ps(k[v], _mm256_loadu_ps(r + 8 * v), a[i][v]);
            }
        }
        for (int i = 0; i < 4; i++)
            for (int v = 0; v < NV; v++) _mm256_storeu_ps(out + (t0 + i) * os + 8 * v, a[i][v]);
    }
    for (; t0 < L; t0++) {  /* the last < 4 steps, one at a time, taps in the same order */
        __m256 a[2];
        for (int v = 0; v < NV; v++) a[v] = _mm256_setzero_ps();
        for (long j = 0; j < Lk && j <= t0; j++) {
            const float *r = in + (t0 - j) * is;
            for (int v = 0; v < NV; v++)
                a[v] = _mm256_fmadd_ps(_mm256_loadu_ps(K + j * ks + 8 * v), _mm256_loadu_ps(r + 8 * v), a[v]);
        }
        for (int v = 0; v < NV; v++) _mm256_storeu_ps(out + t0 * os + 8 * v, a[v]);
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

/* K (Lk, H) -> Kp: per block of channels [h, h + w) (w = 16, 8 or 1, as dc_causal_row walks
 * them) the (Lk, w) slice, contiguous, at Kp + h * Lk */
static void dc_pack_taps(const float *K, float *Kp, long Lk, long H) {
    long h = 0;
    while (h < H) {
        const long w = DC_VEC && h + 16 <= H ? 16 : (DC_VEC && h + 8 <= H ? 8 : 1);
        for (long j = 0; j < Lk; j++)
            for (long c = 0; c < w; c++) Kp[h * Lk + j * w + c] = K[j * H + h + c];
        h += w;
    }
}

/* one batch row: in and out (L, H) with time stride ts (H, or -H from the last row backwards);
 * Kp from dc_pack_taps; buf: L * 16 floats for the packed (L, 16) slice of in */
static void dc_causal_row(const float *in, const float *Kp, float *out, float *buf, long L, long Lk, long H, long ts) {
    long h = 0;
#if DC_VEC
    for (; h + 8 <= H;) {
        const int w = h + 16 <= H ? 16 : 8;
        for (long t = 0; t < L; t++)
            for (int c = 0; c < w; c++) buf[t * w + c] = in[t * ts + h + c];
        if (w == 16) dc_causal_block(buf, 16, Kp + h * Lk, 16, out + h, ts, L, Lk, 2);
        else dc_causal_block(buf, 8, Kp + h * Lk, 8, out + h, ts, L, Lk, 1);
        h += w;
    }
#endif
    for (; h < H; h++)  /* the channels left, one at a time (their packed taps: (Lk, 1)) */
        for (long t = 0; t < L; t++) {
            float a = 0;
            for (long j = 0; j < Lk && j <= t; j++) a += Kp[h * Lk + j] * in[(t - j) * ts + h];
            out[t * ts + h] = a;
        }
}

/* the rows b < B of a causal sum (forward, or gu backwards in time) over nth threads; 1 if out of memory */
static int dc_causal_rows(const float *in, const float *K, float *out, long B, long L, long Lk, long H, long ts,
                          long row0, int nth) {
    float *Kp = (float *)malloc((size_t)(H * Lk) * sizeof(float));
    float *bufs = (float *)malloc((size_t)(nth * L * 16) * sizeof(float));
    if (!Kp || !bufs) { free(Kp); free(bufs); return 1; }
    dc_pack_taps(K, Kp, Lk, H);
    long b;
#pragma omp parallel for schedule(static) num_threads(nth)
    for (b = 0; b < B; b++)
        dc_causal_row(in + b * L * H + row0, Kp, out + b * L * H + row0, bufs + ssm_thread_id() * L * 16, L, Lk, H, ts);
    free(Kp);
    free(bufs);
    return 0;
}

/* y (B, L, H) = causal convolution of u (B, L, H) with K (Lk, H), 1 <= Lk <= L; 1 if out of memory */
int dconv_fwd_f32(const float *u, const float *K, float *y, long B, long L, long Lk, long H, int nthreads) {
    return dc_causal_rows(u, K, y, B, L, Lk, H, H, 0, nthreads > 0 ? nthreads : 1);
}

/* gu (B, L, H) and gK (Lk, H) from gy (B, L, H); either output may be NULL (not wanted);
 * 1 if out of memory */
int dconv_bwd_f32(const float *gy, const float *u, const float *K, float *gu, float *gK, long B, long L, long Lk,
                  long H, int nthreads) {
    const int nth = nthreads > 0 ? nthreads : 1;
    /* gu[s] = sum_j K[j] gy[s + j]: the causal sum in reversed time */
    if (gu && dc_causal_rows(gy, K, gu, B, L, Lk, H, -H, (L - 1) * H, nth)) return 1;
    if (gK) {
        /* threads split the channels; per block of channels, the batch rows in order and for
         * each all the taps, so the row's (L, 16) slices of gy and u are read from cache, not
         * from memory, by every block of four taps */
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
    return 0;
}
