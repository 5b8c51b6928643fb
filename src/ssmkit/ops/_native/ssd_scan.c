/* The SSD scan of Mamba-2 (a scalar decay per head) on the CPU as a sequential recurrence:
 * forward and backward, float32 and float64, plain C99 + OpenMP, raw contiguous pointers.
 *
 * For every batch element b and head h (head h reads group g = h / R of B and C, R = H / G):
 *
 *     a_t = exp(dt_t A),   h_t = a_t h_{t-1} + dt_t x_t B_tᵀ   (h: P x N),   y_t = h_t C_t
 *
 * Layouts (C-contiguous, the caller makes them so): x, y, dy, dx: (b, L, H, P); dt, ddt: (b, L, H);
 * A, dA: (H,); B, C, dB, dC: (b, L, G, N); h0, h_last, dh_last, dh0: (b, H, P, N); saved states:
 * (b, H, K, P, N) with K = ceil(L / T), state k being the one before step k*T.
 *
 * The state of one (b, h) is P rows of N values that share the decay a_t; a step updates it
 * row by row, vectorised over N, four rows at a time so that B_t and C_t are loaded once for
 * four rows. About 3 P N multiply-adds per step and head; the state (P N values) stays in the
 * L1/L2 cache for the whole sequence, and the decay costs one exp per step and head.
 *
 * Backward (the reverse scan), with g_t = dLoss/dh_t and the carry c_t = a_{t+1} g_{t+1}
 * (c_{L-1} = dh_last):
 *     g_t = c_t + dy_t C_tᵀ,   r_t = g_t B_t (P,),   q_t = <g_t, h_{t-1}> (sum over P x N)
 *     dx_t = dt_t r_t,   ddt_t = A a_t q_t + <x_t, r_t>,   dA = sum_{b,t} dt_t a_t q_t
 *     dB_t = sum_{h in group} g_tᵀ (dt_t x_t),   dC_t = sum_{h in group} h_tᵀ dy_t,   dh0 = a_0 g_0
 * h_{t-1} and h_t are recomputed chunk by chunk (T steps) from the saved states into a
 * per-thread buffer of (T + 1) P N values.
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
#ifdef _OPENMP
#include <omp.h>
#endif

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

/* Same, from the state hp into hn (the backward's recomputation keeps every state of a chunk). */
static inline void SSD_CAT(ssd_step_to, SSD_SFX)(const S *restrict hp, S *restrict hn, const S *restrict xt,
                                                 const S *restrict Bt, S a, S dtt, long P, long N) {
    for (long p = 0; p < P; p++) {
        const S *restrict r = hp + p * N;
        S *restrict o = hn + p * N;
        const S xp = dtt * xt[p];
#pragma omp simd
        for (long n = 0; n < N; n++) o[n] = a * r[n] + xp * Bt[n];
    }
}

/* Forward over all (b, h). states may be NULL (inference: nothing saved). */
void SSD_CAT(ssd_fwd, SSD_SFX)(const S *restrict x, const S *restrict dt, const S *restrict A,
                               const S *restrict B, const S *restrict C, const S *restrict h0,
                               S *restrict y, S *restrict h_last, S *restrict states,
                               long nb, long L, long H, long P, long G, long N, long T, int nthreads) {
    const long K = (L + T - 1) / T, R = H / G, PN = P * N;
    long task;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (task = 0; task < nb * H; task++) {
        const long bi = task / H, hh = task % H, g = hh / R;
        const S Ah = A[hh];
        S *h = h_last + task * PN;
        S *cs = states ? states + task * K * PN : NULL;
        if (h0) memcpy(h, h0 + task * PN, PN * sizeof(S));
        else memset(h, 0, PN * sizeof(S));
        for (long t = 0; t < L; t++) {
            if (cs && t % T == 0) memcpy(cs + (t / T) * PN, h, PN * sizeof(S));
            const long row = bi * L + t;
            const S dtt = dt[row * H + hh];
            SSD_CAT(ssd_step, SSD_SFX)(h, x + (row * H + hh) * P, B + (row * G + g) * N, C + (row * G + g) * N,
                                       y + (row * H + hh) * P, SSD_EXP(dtt * Ah), dtt, P, N);
        }
    }
}

/* One reverse step for the rows of a task: updates the carry gc (P x N) from c_t to c_{t-1}
 * = a_t g_t, writes dx_t, accumulates dB_t, dC_t (N each, zeroed by the caller) and returns
 * q_t = <g_t, h_{t-1}> and <x_t, r_t> in out[0], out[1]. */
static inline void SSD_CAT(ssd_back_step, SSD_SFX)(S *restrict gc, const S *restrict hp, const S *restrict hc,
                                                   const S *restrict xt, const S *restrict dyt,
                                                   const S *restrict Bt, const S *restrict Ct,
                                                   S *restrict dxt, S *restrict dBt, S *restrict dCt,
                                                   S a, S dtt, long P, long N, S *out) {
    S q = 0, xr = 0;
    long p = 0;
    for (; p + 4 <= P; p += 4) {
        S *restrict g0 = gc + p * N, *restrict g1 = g0 + N, *restrict g2 = g1 + N, *restrict g3 = g2 + N;
        const S *restrict p0 = hp + p * N, *restrict p1 = p0 + N, *restrict p2 = p1 + N, *restrict p3 = p2 + N;
        const S *restrict c0 = hc + p * N, *restrict c1 = c0 + N, *restrict c2 = c1 + N, *restrict c3 = c2 + N;
        const S y0 = dyt[p], y1 = dyt[p + 1], y2 = dyt[p + 2], y3 = dyt[p + 3];
        const S x0 = dtt * xt[p], x1 = dtt * xt[p + 1], x2 = dtt * xt[p + 2], x3 = dtt * xt[p + 3];
        S r0 = 0, r1 = 0, r2 = 0, r3 = 0, qq = 0;
#pragma omp simd reduction(+ : r0, r1, r2, r3, qq)
        for (long n = 0; n < N; n++) {
            const S b = Bt[n], c = Ct[n];
            const S v0 = g0[n] + y0 * c, v1 = g1[n] + y1 * c, v2 = g2[n] + y2 * c, v3 = g3[n] + y3 * c;
            r0 += v0 * b; r1 += v1 * b; r2 += v2 * b; r3 += v3 * b;
            qq += v0 * p0[n] + v1 * p1[n] + v2 * p2[n] + v3 * p3[n];
            dBt[n] += v0 * x0 + v1 * x1 + v2 * x2 + v3 * x3;
            dCt[n] += y0 * c0[n] + y1 * c1[n] + y2 * c2[n] + y3 * c3[n];
            g0[n] = a * v0; g1[n] = a * v1; g2[n] = a * v2; g3[n] = a * v3;
        }
        q += qq;
        dxt[p] = dtt * r0; dxt[p + 1] = dtt * r1; dxt[p + 2] = dtt * r2; dxt[p + 3] = dtt * r3;
        xr += xt[p] * r0 + xt[p + 1] * r1 + xt[p + 2] * r2 + xt[p + 3] * r3;
    }
    for (; p < P; p++) {
        S *restrict gr = gc + p * N;
        const S *restrict pr = hp + p * N, *restrict cr = hc + p * N;
        const S yp = dyt[p], xp = dtt * xt[p];
        S r = 0, qq = 0;
#pragma omp simd reduction(+ : r, qq)
        for (long n = 0; n < N; n++) {
            const S v = gr[n] + yp * Ct[n];
            r += v * Bt[n];
            qq += v * pr[n];
            dBt[n] += v * xp;
            dCt[n] += yp * cr[n];
            gr[n] = a * v;
        }
        q += qq;
        dxt[p] = dtt * r;
        xr += xt[p] * r;
    }
    out[0] = q;
    out[1] = xr;
}

/* Backward. dh_last and dh0 may be NULL.
 * Outputs: dx (b, L, H, P), ddt (b, L, H), dA (H,), dB, dC (b, L, G, N), dh0 (b, H, P, N).
 * Scratch (caller-allocated, contents ignored):
 *   dA_part: b * H
 *   part:    2 * b * L * H * N when R = H / G > 1 (the dB and dC terms of every head), else unused
 *   work:    nthreads * ((T + 2) * P * N + T)  (per thread: the carry, a chunk's states and decays) */
void SSD_CAT(ssd_bwd, SSD_SFX)(const S *restrict x, const S *restrict dt, const S *restrict A,
                               const S *restrict B, const S *restrict C, const S *restrict states,
                               const S *restrict dy, const S *restrict dh_last, S *restrict dx,
                               S *restrict ddt, S *restrict dA, S *restrict dB, S *restrict dC,
                               S *restrict dh0, S *restrict dA_part, S *restrict part, S *restrict work,
                               long nb, long L, long H, long P, long G, long N, long T, int nthreads) {
    const long K = (L + T - 1) / T, R = H / G, PN = P * N;
    const long wsize = (T + 2) * PN + T;
    S *pB = R > 1 ? part : dB, *pC = R > 1 ? part + nb * L * H * N : dC; /* (b, L, H, N) each */
#pragma omp parallel num_threads(nthreads)
    {
#ifdef _OPENMP
        const long tid = omp_get_thread_num();
#else
        const long tid = 0;
#endif
        S *gc = work + tid * wsize, *hs = gc + PN, *av = hs + (T + 1) * PN;
        long task;
#pragma omp for schedule(dynamic, 1)
        for (task = 0; task < nb * H; task++) {
            const long bi = task / H, hh = task % H, g = hh / R;
            const S Ah = A[hh];
            const S *cs = states + task * K * PN;
            S dAacc = 0, out[2];
            if (dh_last) memcpy(gc, dh_last + task * PN, PN * sizeof(S));
            else memset(gc, 0, PN * sizeof(S));
            for (long k = K - 1; k >= 0; k--) {
                const long s = k * T, e = (s + T < L) ? s + T : L;
                memcpy(hs, cs + k * PN, PN * sizeof(S));
                for (long i = 0; i < e - s; i++) {
                    const long row = bi * L + s + i;
                    const S dtt = dt[row * H + hh], a = SSD_EXP(dtt * Ah);
                    av[i] = a;
                    SSD_CAT(ssd_step_to, SSD_SFX)(hs + i * PN, hs + (i + 1) * PN, x + (row * H + hh) * P,
                                                  B + (row * G + g) * N, a, dtt, P, N);
                }
                for (long i = e - s - 1; i >= 0; i--) {
                    const long row = bi * L + s + i;
                    const S dtt = dt[row * H + hh], a = av[i];
                    S *dBt = pB + (row * H + (R > 1 ? hh : g)) * N, *dCt = pC + (row * H + (R > 1 ? hh : g)) * N;
                    memset(dBt, 0, N * sizeof(S));
                    memset(dCt, 0, N * sizeof(S));
                    SSD_CAT(ssd_back_step, SSD_SFX)(gc, hs + i * PN, hs + (i + 1) * PN, x + (row * H + hh) * P,
                                                    dy + (row * H + hh) * P, B + (row * G + g) * N,
                                                    C + (row * G + g) * N, dx + (row * H + hh) * P, dBt, dCt,
                                                    a, dtt, P, N, out);
                    ddt[row * H + hh] = Ah * a * out[0] + out[1];
                    dAacc += dtt * a * out[0];
                }
            }
            dA_part[task] = dAacc;
            if (dh0) memcpy(dh0 + task * PN, gc, PN * sizeof(S));
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
