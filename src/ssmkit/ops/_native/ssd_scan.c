/* The SSD scan of Mamba-2 (a scalar decay per head) on the CPU as a sequential recurrence:
 * forward and backward, float32 and float64, plain C99 + OpenMP, raw contiguous pointers.
 *
 * For every batch element b and head h (head h reads group g = h / R of B and C, R = H / G):
 *
 *     a_t = exp(dt_t A),   h_t = a_t h_{t-1} + dt_t x_t B_tᵀ   (h: P x N),   y_t = h_t C_t
 *
 * Layouts (C-contiguous, the caller makes them so): x, y, dy, dx: (b, L, H, P); dt, ddt: (b, L, H);
 * A, dA: (H,); B, C, dB, dC: (b, L, G, N); h0, h_last, dh_last, dh0: (b, H, P, N).
 *
 * The state of one (b, h) is P rows of N values that share the decay a_t; a step updates it
 * row by row, vectorised over N, four rows at a time so that B_t and C_t are loaded once for
 * four rows. About 3 P N multiply-adds per step and head; the state (P N values) stays in the
 * L1/L2 cache for the whole sequence, and the decay costs one exp per step and head.
 *
 * Backward, with g_t = dLoss/dh_t and the carry c_t = a_{t+1} g_{t+1} (c_{L-1} = dh_last):
 *     g_t = c_t + dy_t C_tᵀ,   r_t = g_t B_t (P,),   dx_t = dt_t r_t,   dh0 = c_{-1} = a_0 g_0
 *     dB_t = sum_{h in group} g_tᵀ (dt_t x_t),      dC_t = sum_{h in group} h_tᵀ dy_t
 * and for the decay, with D_t = dLoss/d(dt_t A) = a_t <g_t, h_{t-1}> (sums over P x N):
 *     ddt_t = A D_t + <x_t, r_t>,   dA = sum_{b,t} dt_t D_t.
 * D_t needs no state: since a_t h_{t-1} = h_t - dt_t x_t B_tᵀ and <g_t, h_t> = <c_t, h_t> +
 * <dy_t, y_t> with <c_t, h_t> = D_{t+1},
 *     D_t = D_{t+1} + <dy_t, y_t> - dt_t <x_t, r_t>,
 * a scalar recursion whose terms are dot products over P. Its rounding errors would add up
 * along the sequence, so it restarts from the exact D_{e} = <c_{e-1}, h_{e-1}> at the end of
 * every chunk of T steps (one P x N dot product per chunk; T is the caller's, see
 * ssmkit.ops.ssd.restart_every).
 * A task runs two sweeps: forward from h0, recomputing the states, writing dC_t (it needs h_t
 * and dy_t only) and keeping the state at the end of each chunk (K = ceil(L / T) states in a
 * per-thread buffer); then backward over the carry, writing dx, dB, ddt and dA. Nothing but
 * the inputs and y is kept from the forward pass.
 *
 * Determinism: every (b, h) is one task computed sequentially by one thread. Its dB, dC terms
 * go to its own slot (b, t, h, ·) of a partial buffer (or straight into dB, dC when every
 * group has one head), its dA term to slot (b, h); after the tasks, the slots are summed in
 * index order (heads of a group, then batch elements for dA). The gradients are therefore
 * bit-identical for any thread count and schedule.
 *
 * The file is a template: it includes itself twice, once per scalar type.
 */
#ifndef SSD_SCALAR

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "native_common.h"

/* The rows a step reads (x, y, dy: P values; B, C: N values) lie far apart in memory (one
 * step is a row of the (b, L, H, P) or (b, L, G, N) tensors, up to several kB apart), and the
 * reverse sweep walks them backwards; hardware prefetchers follow such strides poorly (the
 * reverse sweep stalled on these loads in a profile), so the rows of the step SSD_AHEAD steps
 * ahead are requested explicitly. */
#define SSD_AHEAD 2
static inline void ssd_prefetch(const void *p, long bytes) {
#if defined(__GNUC__)
    for (long i = 0; i < bytes; i += 64) __builtin_prefetch((const char *)p + i, 0, 3);
#else
    (void)p;
    (void)bytes;
#endif
}

/* The same for rows about to be written (dx, dB, dC, y): fetched for writing. */
static inline void ssd_prefetch_w(void *p, long bytes) {
#if defined(__GNUC__)
    for (long i = 0; i < bytes; i += 64) __builtin_prefetch((char *)p + i, 1, 3);
#else
    (void)p;
    (void)bytes;
#endif
}

#define SSD_SCALAR float
#define SSD_SFX f32
#define SSD_EXP expf
#include __FILE__
#undef SSD_SCALAR
#undef SSD_SFX
#undef SSD_EXP

#define SSD_SCALAR double
#define SSD_SFX f64
#define SSD_EXP exp
#include __FILE__
#undef SSD_SCALAR
#undef SSD_SFX
#undef SSD_EXP

#else /* template body */

#define SSD_CAT2(a, b) a##_##b
#define SSD_CAT(a, b) SSD_CAT2(a, b)
#define S SSD_SCALAR

/* One step of the state: h = a h + (dt x) Bᵀ, yt = h C. */
static inline void SSD_CAT(ssd_step, SSD_SFX)(S *restrict h, const S *restrict xt, const S *restrict Bt,
                                              const S *restrict Ct, S *restrict yt, S a, S dtt,
                                              long P, long N) {
    long p = 0;
    for (; p + 4 <= P; p += 4) {
        S *restrict h0 = h + p * N, *restrict h1 = h0 + N, *restrict h2 = h1 + N, *restrict h3 = h2 + N;
        const S x0 = dtt * xt[p], x1 = dtt * xt[p + 1], x2 = dtt * xt[p + 2], x3 = dtt * xt[p + 3];
        S s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
        for (long n = 0; n < N; n++) {
            const S b = Bt[n], c = Ct[n];
            const S v0 = a * h0[n] + x0 * b, v1 = a * h1[n] + x1 * b;
            const S v2 = a * h2[n] + x2 * b, v3 = a * h3[n] + x3 * b;
            h0[n] = v0; h1[n] = v1; h2[n] = v2; h3[n] = v3;
            s0 += v0 * c; s1 += v1 * c; s2 += v2 * c; s3 += v3 * c;
        }
        yt[p] = s0; yt[p + 1] = s1; yt[p + 2] = s2; yt[p + 3] = s3;
    }
    for (; p < P; p++) {
        S *restrict hr = h + p * N;
        const S xp = dtt * xt[p];
        S s = 0;
#pragma omp simd reduction(+ : s)
        for (long n = 0; n < N; n++) {
            const S v = a * hr[n] + xp * Bt[n];
            hr[n] = v;
            s += v * Ct[n];
        }
        yt[p] = s;
    }
}

/* Forward over all (b, h). */
void SSD_CAT(ssd_fwd, SSD_SFX)(const S *restrict x, const S *restrict dt, const S *restrict A,
                               const S *restrict B, const S *restrict C, const S *restrict h0,
                               S *restrict y, S *restrict h_last,
                               long nb, long L, long H, long P, long G, long N, int nthreads) {
    const long R = H / G, PN = P * N;
    long task;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (task = 0; task < nb * H; task++) {
        const long bi = task / H, hh = task % H, g = hh / R;
        const S Ah = A[hh];
        S *h = h_last + task * PN;
        if (h0) memcpy(h, h0 + task * PN, PN * sizeof(S));
        else memset(h, 0, PN * sizeof(S));
        for (long t = 0; t < L; t++) {
            const long row = bi * L + t;
            const S dtt = dt[row * H + hh];
            if (t + SSD_AHEAD < L) {
                const long ra = row + SSD_AHEAD;
                ssd_prefetch(x + (ra * H + hh) * P, P * sizeof(S));
                ssd_prefetch(B + (ra * G + g) * N, N * sizeof(S));
                ssd_prefetch(C + (ra * G + g) * N, N * sizeof(S));
                ssd_prefetch_w(y + (ra * H + hh) * P, P * sizeof(S));
            }
            SSD_CAT(ssd_step, SSD_SFX)(h, x + (row * H + hh) * P, B + (row * G + g) * N, C + (row * G + g) * N,
                                       y + (row * H + hh) * P, SSD_EXP(dtt * Ah), dtt, P, N);
        }
    }
}

/* The backward's forward sweep, one step: h = a h + (dt x) Bᵀ and dCt += hᵀ dyt. */
static inline void SSD_CAT(ssd_step_dc, SSD_SFX)(S *restrict h, const S *restrict xt, const S *restrict Bt,
                                                 const S *restrict dyt, S *restrict dCt, S a, S dtt,
                                                 long P, long N) {
    long p = 0;
    for (; p + 4 <= P; p += 4) {
        S *restrict h0 = h + p * N, *restrict h1 = h0 + N, *restrict h2 = h1 + N, *restrict h3 = h2 + N;
        const S x0 = dtt * xt[p], x1 = dtt * xt[p + 1], x2 = dtt * xt[p + 2], x3 = dtt * xt[p + 3];
        const S y0 = dyt[p], y1 = dyt[p + 1], y2 = dyt[p + 2], y3 = dyt[p + 3];
#pragma omp simd
        for (long n = 0; n < N; n++) {
            const S b = Bt[n];
            const S v0 = a * h0[n] + x0 * b, v1 = a * h1[n] + x1 * b;
            const S v2 = a * h2[n] + x2 * b, v3 = a * h3[n] + x3 * b;
            h0[n] = v0; h1[n] = v1; h2[n] = v2; h3[n] = v3;
            dCt[n] += y0 * v0 + y1 * v1 + y2 * v2 + y3 * v3;
        }
    }
    for (; p < P; p++) {
        S *restrict hr = h + p * N;
        const S xp = dtt * xt[p], yp = dyt[p];
#pragma omp simd
        for (long n = 0; n < N; n++) {
            const S v = a * hr[n] + xp * Bt[n];
            hr[n] = v;
            dCt[n] += yp * v;
        }
    }
}

/* The backward's reverse sweep, one step: g = gc + dyt Ctᵀ, dxt = dt g Bt, dBt += gᵀ (dt xt),
 * gc = a g; returns <xt, g Bt>. */
static inline S SSD_CAT(ssd_back_step, SSD_SFX)(S *restrict gc, const S *restrict xt, const S *restrict dyt,
                                                const S *restrict Bt, const S *restrict Ct,
                                                S *restrict dxt, S *restrict dBt, S a, S dtt, long P, long N) {
    S xr = 0;
    long p = 0;
    for (; p + 4 <= P; p += 4) {
        S *restrict g0 = gc + p * N, *restrict g1 = g0 + N, *restrict g2 = g1 + N, *restrict g3 = g2 + N;
        const S y0 = dyt[p], y1 = dyt[p + 1], y2 = dyt[p + 2], y3 = dyt[p + 3];
        const S x0 = dtt * xt[p], x1 = dtt * xt[p + 1], x2 = dtt * xt[p + 2], x3 = dtt * xt[p + 3];
        S r0 = 0, r1 = 0, r2 = 0, r3 = 0;
#pragma omp simd reduction(+ : r0, r1, r2, r3)
        for (long n = 0; n < N; n++) {
            const S b = Bt[n], c = Ct[n];
            const S v0 = g0[n] + y0 * c, v1 = g1[n] + y1 * c, v2 = g2[n] + y2 * c, v3 = g3[n] + y3 * c;
            r0 += v0 * b; r1 += v1 * b; r2 += v2 * b; r3 += v3 * b;
            dBt[n] += v0 * x0 + v1 * x1 + v2 * x2 + v3 * x3;
            g0[n] = a * v0; g1[n] = a * v1; g2[n] = a * v2; g3[n] = a * v3;
        }
        dxt[p] = dtt * r0; dxt[p + 1] = dtt * r1; dxt[p + 2] = dtt * r2; dxt[p + 3] = dtt * r3;
        xr += xt[p] * r0 + xt[p + 1] * r1 + xt[p + 2] * r2 + xt[p + 3] * r3;
    }
    for (; p < P; p++) {
        S *restrict gr = gc + p * N;
        const S yp = dyt[p], xp = dtt * xt[p];
        S r = 0;
#pragma omp simd reduction(+ : r)
        for (long n = 0; n < N; n++) {
            const S v = gr[n] + yp * Ct[n];
            r += v * Bt[n];
            dBt[n] += v * xp;
            gr[n] = a * v;
        }
        dxt[p] = dtt * r;
        xr += xt[p] * r;
    }
    return xr;
}

/* Backward. h0, dh_last and dh0 may be NULL; y is the forward's output.
 * Outputs: dx (b, L, H, P), ddt (b, L, H), dA (H,), dB, dC (b, L, G, N), dh0 (b, H, P, N).
 * Scratch (caller-allocated, contents ignored):
 *   dA_part: b * H
 *   part:    2 * b * L * H * N when R = H / G > 1 (the dB and dC terms of every head), else unused
 *   work:    nthreads * (K + 1) * P * N, K = ceil(L / T) (per thread: the state, the chunk-end
 *            states; the carry reuses the state's space) */
void SSD_CAT(ssd_bwd, SSD_SFX)(const S *restrict x, const S *restrict dt, const S *restrict A,
                               const S *restrict B, const S *restrict C, const S *restrict h0,
                               const S *restrict y, const S *restrict dy, const S *restrict dh_last,
                               S *restrict dx, S *restrict ddt, S *restrict dA, S *restrict dB,
                               S *restrict dC, S *restrict dh0, S *restrict dA_part, S *restrict part,
                               S *restrict work, long nb, long L, long H, long P, long G, long N, long T,
                               int nthreads) {
    const long K = (L + T - 1) / T, R = H / G, PN = P * N;
    S *pB = R > 1 ? part : dB, *pC = R > 1 ? part + nb * L * H * N : dC; /* (b, L, H, N) each */
#pragma omp parallel num_threads(nthreads)
    {
        const long tid = ssm_thread_id();
        S *hg = work + tid * (K + 1) * PN, *hb = hg + PN;
        long task;
#pragma omp for schedule(dynamic, 1)
        for (task = 0; task < nb * H; task++) {
            const long bi = task / H, hh = task % H, g = hh / R, slot = R > 1 ? hh : g;
            const S Ah = A[hh];
            /* forward sweep: the states again, dC, and the state at the end of every chunk */
            if (h0) memcpy(hg, h0 + task * PN, PN * sizeof(S));
            else memset(hg, 0, PN * sizeof(S));
            for (long t = 0; t < L; t++) {
                const long row = bi * L + t;
                const S dtt = dt[row * H + hh];
                if (t + SSD_AHEAD < L) {
                    const long ra = row + SSD_AHEAD;
                    ssd_prefetch(x + (ra * H + hh) * P, P * sizeof(S));
                    ssd_prefetch(dy + (ra * H + hh) * P, P * sizeof(S));
                    ssd_prefetch(B + (ra * G + g) * N, N * sizeof(S));
                    ssd_prefetch_w(pC + (ra * H + slot) * N, N * sizeof(S));
                }
                S *dCt = pC + (row * H + slot) * N;
                memset(dCt, 0, N * sizeof(S));
                SSD_CAT(ssd_step_dc, SSD_SFX)(hg, x + (row * H + hh) * P, B + (row * G + g) * N,
                                              dy + (row * H + hh) * P, dCt, SSD_EXP(dtt * Ah), dtt, P, N);
                if ((t + 1) % T == 0 || t == L - 1) memcpy(hb + (t / T) * PN, hg, PN * sizeof(S));
            }
            /* reverse sweep over the carry (in hg from here on) */
            if (dh_last) memcpy(hg, dh_last + task * PN, PN * sizeof(S));
            else memset(hg, 0, PN * sizeof(S));
            S D = 0, dAacc = 0;
            for (long t = L - 1; t >= 0; t--) {
                const long row = bi * L + t, xo = (row * H + hh) * P;
                const S dtt = dt[row * H + hh];
                if (t >= SSD_AHEAD) {
                    const long ra = row - SSD_AHEAD, xa = (ra * H + hh) * P;
                    ssd_prefetch(x + xa, P * sizeof(S));
                    ssd_prefetch(y + xa, P * sizeof(S));
                    ssd_prefetch(dy + xa, P * sizeof(S));
                    ssd_prefetch(B + (ra * G + g) * N, N * sizeof(S));
                    ssd_prefetch(C + (ra * G + g) * N, N * sizeof(S));
                    ssd_prefetch(dt + ra * H + hh, sizeof(S));
                    ssd_prefetch_w(dx + xa, P * sizeof(S));
                    ssd_prefetch_w(pB + (ra * H + slot) * N, N * sizeof(S));
                }
                if ((t + 1) % T == 0 || t == L - 1) { /* restart: D_{t+1} = <c_t, h_t> */
                    const S *hk = hb + (t / T) * PN;
                    S acc = 0;
#pragma omp simd reduction(+ : acc)
                    for (long i = 0; i < PN; i++) acc += hg[i] * hk[i];
                    D = acc;
                }
                S yd = 0;
                for (long p = 0; p < P; p++) yd += dy[xo + p] * y[xo + p];
                S *dBt = pB + (row * H + slot) * N;
                memset(dBt, 0, N * sizeof(S));
                const S xr = SSD_CAT(ssd_back_step, SSD_SFX)(hg, x + xo, dy + xo, B + (row * G + g) * N,
                                                             C + (row * G + g) * N, dx + xo, dBt,
                                                             SSD_EXP(dtt * Ah), dtt, P, N);
                D += yd - dtt * xr;
                ddt[row * H + hh] = Ah * D + xr;
                dAacc += dtt * D;
            }
            dA_part[task] = dAacc;
            if (dh0) memcpy(dh0 + task * PN, hg, PN * sizeof(S));
        }
        /* (implicit barrier) sums over the heads of a group, in head order */
        if (R > 1) {
            long row;
#pragma omp for schedule(static)
            for (row = 0; row < nb * L; row++) {
                for (long gg = 0; gg < G; gg++) {
                    S *oB = dB + (row * G + gg) * N, *oC = dC + (row * G + gg) * N;
                    const S *qB = pB + (row * H + gg * R) * N, *qC = pC + (row * H + gg * R) * N;
                    memcpy(oB, qB, N * sizeof(S));
                    memcpy(oC, qC, N * sizeof(S));
                    for (long r = 1; r < R; r++) {
#pragma omp simd
                        for (long n = 0; n < N; n++) {
                            oB[n] += qB[r * N + n];
                            oC[n] += qC[r * N + n];
                        }
                    }
                }
            }
        }
    }
    for (long hh = 0; hh < H; hh++) { /* sum over the batch, in order */
        S acc = 0;
        for (long bi = 0; bi < nb; bi++) acc += dA_part[bi * H + hh];
        dA[hh] = acc;
    }
}

#undef S
#undef SSD_CAT
#undef SSD_CAT2

#endif
