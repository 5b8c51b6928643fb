/* Causal convolution along the length of (B, L, H) tensors, computed directly, O(L Lk) per
 * channel: for short sequences (a few hundred steps) it is cheaper than the FFT route and needs
 * no transpose, since the channels are the contiguous dimension.
 *     y[b,t,h]  = sum_{j <= min(t, Lk-1)} K[j,h] u[b,t-j,h]                  (forward)
 *     gu[b,s,h] = sum_{j < Lk, s+j < L}   K[j,h] gy[b,s+j,h]                 (gradient of u)
 *     gK[j,h]   = sum_b sum_{t=j}^{L-1}   gy[b,t,h] u[b,t-j,h]               (gradient of K)
 * K is given as (Lk, H): the kernel transposed, channels contiguous. float32, contiguous.
 * The gradient of u is the forward convolution run backwards in time (a negative time stride).
 * Vectorised over channels (8 per AVX register). Each block of 8 channels of a batch row is
 * packed into contiguous rows with zero rows around it; DC_T outputs (or taps) are summed at
 * once, and the input rows they need rotate through DC_T registers, so each step loads one input
 * row and one tap row for DC_T multiply-adds (dc_causal8, dc_taps8). DC_T is 7 with AVX2's 16
 * vector registers and 12 where AVX-512VL gives 32 (the same 256-bit code; forward + backward
 * 5-14% faster on an AVX-512 AMD EPYC, more for longer sequences). Threads split the batch (forward,
 * gu) or the channels (gK); every sum is taken in one fixed order (taps, or batch then time,
 * increasing), so the results do not depend on the number of threads. */
#include <stddef.h>
#include <stdlib.h>

#include "native_common.h"

#if defined(__AVX512VL__)
/* 32 vector registers (AVX-512VL encodes ymm16-31 too): 12 accumulators + 12 input rows + 1 */
#define DC_T 12
#define DC_PAD 16
#else
#define DC_T 7   /* outputs (or taps) per register block: 7 accumulators + 7 input rows + 1 = 15 registers */
#define DC_PAD 8 /* zero rows before row 0 of a packed slice (at least DC_T - 1) */
#endif
#define DC_PRAGMA(x) _Pragma(#x)
#define DC_UNROLL(n) DC_PRAGMA(GCC unroll n)

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

/* out[t] = sum_{j < Lk, j <= t} K[j] in[t - j] for 8 channels and every t < L. in: a packed
 * slice, rows of 8 floats, with DC_PAD zero rows before row 0 and zero rows after row L - 1 up to
 * a multiple of DC_T; K: packed (round_up(Lk, DC_T), 8) with zero taps past Lk; output (t, c) at
 * out + t * os + c. For DC_T outputs t0 .. t0 + 6, tap j reads rows t0 - j .. t0 + 6 - j: six of
 * them were read by tap j - 1, so the rows rotate through DC_T registers (row q in register
 * q mod DC_T, fixed once the taps are unrolled by DC_T) and each tap loads one row and one tap
 * for DC_T multiply-adds. The zero rows and taps stand for the terms outside the sum, so every
 * block runs whole groups of DC_T taps without branches. */
static void dc_causal8(const float *in, const float *K, long Lk, float *out, long os, long L) {
    for (long t0 = 0; t0 < L; t0 += DC_T) {
        __m256 acc[DC_T], r[DC_T];
        for (int i = 0; i < DC_T; i++) acc[i] = _mm256_setzero_ps();
        for (int i = 1; i < DC_T; i++) r[i] = _mm256_loadu_ps(in + (t0 + i) * 8);
        long nt = t0 + DC_T < Lk ? t0 + DC_T : Lk; /* taps j <= t0 + DC_T - 1 and j < Lk */
        nt = (nt + DC_T - 1) / DC_T * DC_T;
        for (long j = 0; j < nt; j += DC_T) {
DC_UNROLL(DC_T)
            for (int jj = 0; jj < DC_T; jj++) {
                const int s0 = (DC_T - jj) % DC_T; /* the register of row t0 - j - jj */
                r[s0] = _mm256_loadu_ps(in + (t0 - j - jj) * 8);
                const __m256 k = _mm256_loadu_ps(K + (j + jj) * 8);
DC_UNROLL(DC_T)
                for (int i = 0; i < DC_T; i++) acc[i] = _mm256_fmadd_ps(k, r[(s0 + i) % DC_T], acc[i]);
            }
        }
        for (int i = 0; i < DC_T && t0 + i < L; i++) _mm256_storeu_ps(out + (t0 + i) * os, acc[i]);
    }
}

/* gK[j] += sum_{t=j}^{L-1} g[t] x[t - j] over one batch row, for the taps j < Lk and 8 channels;
 * gK's row j at gK + j * H. x: a packed slice as for dc_causal8 (zero rows before row 0, and at
 * least DC_T zero rows after row L - 1); g: packed rows of 8 floats, zero from row L to L + DC_T.
 * Per group of DC_T taps j0 .. j0 + 6, step s = t - j0 reads rows x[s - i], i < DC_T: one new
 * row per step, the others rotate through DC_T registers as in dc_causal8. The running sums are
 * loaded from gK and stored back, so the batch rows add up in order. */
static void dc_taps8(const float *g, const float *x, float *gK, long H, long L, long Lk) {
    for (long j0 = 0; j0 < Lk; j0 += DC_T) {
        __m256 acc[DC_T], r[DC_T];
        for (int i = 0; i < DC_T; i++) {
            acc[i] = j0 + i < Lk ? _mm256_loadu_ps(gK + (j0 + i) * H) : _mm256_setzero_ps();
            r[i] = _mm256_setzero_ps();
        }
        const long ns = L - j0;
        for (long s = 0; s < ns; s += DC_T) {
DC_UNROLL(DC_T)
            for (int ss = 0; ss < DC_T; ss++) {
                r[ss] = _mm256_loadu_ps(x + (s + ss) * 8); /* row s + ss in register (s + ss) mod DC_T */
                const __m256 gv = _mm256_loadu_ps(g + (j0 + s + ss) * 8);
DC_UNROLL(DC_T)
                for (int i = 0; i < DC_T; i++) acc[i] = _mm256_fmadd_ps(gv, r[(ss - i + DC_T) % DC_T], acc[i]);
            }
        }
        for (int i = 0; i < DC_T && j0 + i < Lk; i++) _mm256_storeu_ps(gK + (j0 + i) * H, acc[i]);
    }
}
#define DC_VEC 1
#else
#define DC_VEC 0
#endif

/* rows of taps per block of 8 channels in the packed K: Lk rounded up to DC_T */
static long dc_taps_padded(long Lk) { return DC_VEC ? (Lk + DC_T - 1) / DC_T * DC_T : Lk; }

/* K (Lk, H) -> Kp: per block of 8 channels [h, h + 8) the (Lkp, 8) slice at Kp + h * Lkp, zero
 * past Lk; per channel of the tail (H mod 8) its Lk taps at Kp + h * Lkp */
static void dc_pack_taps(const float *K, float *Kp, long Lk, long H) {
    const long Lkp = dc_taps_padded(Lk);
    long h = 0;
    for (; DC_VEC && h + 8 <= H; h += 8)
        for (long j = 0; j < Lkp; j++)
            for (long c = 0; c < 8; c++) Kp[h * Lkp + j * 8 + c] = j < Lk ? K[j * H + h + c] : 0.0f;
    for (; h < H; h++)
        for (long j = 0; j < Lk; j++) Kp[h * Lkp + j] = K[j * H + h];
}

/* floats of one thread's packed slice: DC_PAD zero rows, L rows rounded up to DC_T, 8 floats each */
static long dc_slice_floats(long L) { return (DC_PAD + (L + DC_T - 1) / DC_T * DC_T) * 8; }

/* rows t < L of 8 channels at h of an (L, H) slice with time stride ts -> dst, rows of 8 floats */
static void dc_pack8(const float *src, long ts, long h, long L, float *dst) {
    for (long t = 0; t < L; t++)
        for (int c = 0; c < 8; c++) dst[t * 8 + c] = src[t * ts + h + c];
}

/* one batch row: in and out (L, H) with time stride ts (H, or -H from the last row backwards);
 * Kp from dc_pack_taps; buf: dc_slice_floats(L) floats, its padding rows zero */
static void dc_causal_row(const float *in, const float *Kp, float *out, float *buf, long L, long Lk, long H, long ts) {
    const long Lkp = dc_taps_padded(Lk);
    long h = 0;
#if DC_VEC
    float *rows = buf + DC_PAD * 8;
    for (; h + 8 <= H; h += 8) {
        dc_pack8(in, ts, h, L, rows);
        dc_causal8(rows, Kp + h * Lkp, Lk, out + h, ts, L);
    }
#endif
    for (; h < H; h++)  /* the channels left, one at a time */
        for (long t = 0; t < L; t++) {
            float a = 0;
            for (long j = 0; j < Lk && j <= t; j++) a += Kp[h * Lkp + j] * in[(t - j) * ts + h];
            out[t * ts + h] = a;
        }
}

/* the rows b < B of a causal sum (forward, or gu backwards in time) over nth threads; 1 if out of memory */
static int dc_causal_rows(const float *in, const float *K, float *out, long B, long L, long Lk, long H, long ts,
                          long row0, int nth) {
    const long nbuf = dc_slice_floats(L);
    float *Kp = (float *)malloc((size_t)(H * dc_taps_padded(Lk)) * sizeof(float));
    float *bufs = (float *)calloc((size_t)(nth * nbuf), sizeof(float)); /* zero: the padding rows */
    if (!Kp || !bufs) { free(Kp); free(bufs); return 1; }
    dc_pack_taps(K, Kp, Lk, H);
    long b;
#pragma omp parallel for schedule(static) num_threads(nth)
    for (b = 0; b < B; b++)
        dc_causal_row(in + b * L * H + row0, Kp, out + b * L * H + row0, bufs + ssm_thread_id() * nbuf, L, Lk, H, ts);
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
        /* threads split the channels (a contiguous range of units each); a thread takes the batch
         * rows in order and, per row, each of its blocks of 8 channels: it packs the block's
         * (L, 8) slices of gy and u and sums its taps. Batch rows outside, so a row's (L, H) slice is
         * read from memory once (with the blocks outside, each block's pass would read every
         * cache line of gy and u again: half a line is 8 channels). Per channel the batch rows
         * still add up in order. */
        const long nvec = DC_VEC ? H / 8 : 0, nunit = nvec + (H - 8 * nvec);
        const long nbuf = dc_slice_floats(L) + DC_T * 8; /* u's slice, and DC_T more zero rows */
        float *bufs = (float *)calloc((size_t)(nth * 2 * nbuf), sizeof(float));
        if (!bufs) return 1;
        for (long j = 0; j < Lk; j++)
            for (long h = 0; h < H; h++) gK[j * H + h] = 0;
#pragma omp parallel num_threads(nth)
        {
            const long tid = ssm_thread_id(), nt = ssm_num_threads();
            const long w0 = nunit * tid / nt, w1 = nunit * (tid + 1) / nt;
            float *xs = bufs + tid * 2 * nbuf, *gs = xs + nbuf, *xrows = xs + DC_PAD * 8;
            for (long b = 0; b < B; b++) {
                const float *g = gy + b * L * H, *x = u + b * L * H;
                for (long w = w0; w < w1; w++) {
                    /* unit w: a block of 8 channels, or one channel of the scalar tail */
                    const long h = w < nvec ? 8 * w : 8 * nvec + (w - nvec);
#if DC_VEC
                    if (w < nvec) {
                        dc_pack8(x, H, h, L, xrows);
                        dc_pack8(g, H, h, L, gs);
                        dc_taps8(gs, xrows, gK + h, H, L, Lk);
                        continue;
                    }
#endif
                    for (long j = 0; j < Lk; j++) {
                        float a = gK[j * H + h];
                        for (long t = j; t < L; t++) a += g[t * H + h] * x[(t - j) * H + h];
                        gK[j * H + h] = a;
                    }
                }
            }
        }
        free(bufs);
    }
    return 0;
}
