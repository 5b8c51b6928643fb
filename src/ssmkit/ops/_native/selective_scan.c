/* Selective scan (Mamba's core recurrence) on the CPU: forward and backward, float32 and
 * float64, plain C99 + OpenMP, raw contiguous pointers (no torch headers).
 *
 * For every batch element b and channel d (state size N; B group gb = d / (D / GB), C group
 * gc = d / (D / GC), so B and C may be grouped differently):
 *
 *     h_t[n] = exp(dt_t A[n]) h_{t-1}[n] + dt_t u_t B_t[n],      h_{-1} = h0 (or 0)
 *     y_t    = sum_n C_t[n] h_t[n]
 *
 * Layouts (all C-contiguous; the caller makes them so):  u, dt, y, dy: (b, D, L);  A, dA: (D, N);
 * B, dB: (b, GB, L, N) and C, dC: (b, GC, L, N) (time-major, so a step reads N contiguous
 * values); h0, h_last, dh_last, dh0: (b, D, N);  chunk states: (b, D, K, N) with K = ceil(L / T),
 * the state before step k*T.
 *
 * Backward (the reverse scan), with E_t = exp(dt_t A) and g_t = dLoss/dh_t:
 *     g_t    = C_t dy_t + E_{t+1} g_{t+1}              (g_{L-1} also gets dh_last)
 *     du_t   = dt_t sum_n g_t[n] B_t[n]
 *     ddt_t  = sum_n g_t[n] (A[n] E_t[n] h_{t-1}[n] + B_t[n] u_t)
 *     dA[n]  = sum_t g_t[n] dt_t E_t[n] h_{t-1}[n]      (summed over the batch too)
 *     dB_t[n] = sum_{d in group} g_t[n] dt_t u_t,   dC_t[n] = sum_{d in group} dy_t h_t[n]
 *     dh0    = E_0 g_0
 * The states inside a chunk are recomputed from the saved chunk-start state into a T x N
 * buffer, so memory stays O(b D N (L/T + T)).
 *
 * Parallel work and determinism: the forward runs over (b, d) rows, each independent. The
 * backward's work is cut into tasks that depend on the shapes only, never on the thread count:
 * a task is a block of channels of one batch element inside one "fine group" (the groups of
 * lcm(GB, GC), so a block reads one B group and one C group); see ssm_blocking_. The time axis is
 * swept backwards in segments of S steps (a multiple of T); in a segment every task writes its
 * dB, dC contributions into its own slot of a partial buffer (channels in index order), then
 * the slots are summed in slot order into dB, dC. dA is summed over the batch in index order
 * at the end. Every floating-point sum therefore happens in one fixed order: the gradients are
 * bit-identical for any thread count and any schedule (tasks are still scheduled dynamically,
 * so a descheduled thread on a shared machine does not hold the others back).
 *
 * The second half of the file holds the fused Mamba block kernels (mi_* and cv_*), which work
 * in the channels-last layout of the block's projections, (b, L, E) rows, vectorised over
 * blocks of MI_CB channels (see ssmkit.ops.mamba_fused for the formulas).
 *
 * The file is a template: it includes itself twice, once per scalar type.
 */
#ifndef SSM_SCALAR

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "native_common.h"

#define SSM_BLOCK 8
#define MI_CB 32 /* channels per vector block in the fused Mamba kernels */
#define CV_C 128 /* channels per task of the conv kernels (contiguous in each row) */

static long ssm_gcd_(long a, long b) { while (b) { long r = a % b; a = b; b = r; } return a; }
static long ssm_lcm_(long a, long b) { return a / ssm_gcd_(a, b) * b; }

/* The backward's blocking, a function of the shapes only: F = lcm(GB, GC) fine groups of
 * per = D / F channels; each (batch element, fine group) is cut into nblk tasks of cb channels,
 * about SSM_TASKS tasks in all (enough for any thread count here, few enough that the
 * per-task partial buffers stay small), and at least SSM_BLOCK channels per task. */
#define SSM_TASKS 64
static void ssm_blocking_(long nb, long D, long GB, long GC, long *F, long *per, long *cb, long *nblk) {
    *F = ssm_lcm_(GB, GC);
    *per = D / *F;
    long want = (SSM_TASKS + nb * *F - 1) / (nb * *F);     /* tasks per (b, f) */
    const long most = (*per + SSM_BLOCK - 1) / SSM_BLOCK;  /* at least SSM_BLOCK channels each */
    if (want > most) want = most;
    if (want < 1) want = 1;
    *cb = (*per + want - 1) / want;
    *nblk = (*per + *cb - 1) / *cb;
}

/* The tasks of np column bands ("parts") of x, batch element by batch element: task i is batch
 * element i / per, then part by part and chunk by chunk, so the parts of one batch element run
 * one after another while its rows of x are still in L2 (separate calls per part would each read
 * every row of x from memory: rows of Mamba-2's in-projection are 386 floats, a part 64-128 of
 * them). cv_part_task maps task i to (bi, p, c0); per = the tasks of one batch element. */
static long cv_part_tasks(long np, const long *width) {
    long per = 0;
    for (long p = 0; p < np; p++) per += (width[p] + CV_C - 1) / CV_C;
    return per;
}

static void cv_part_task(long i, long per, long np, const long *width, long *bi, long *p, long *c0) {
    long j = i % per;
    *bi = i / per;
    for (*p = 0; *p < np - 1 && j >= (width[*p] + CV_C - 1) / CV_C; (*p)++) j -= (width[*p] + CV_C - 1) / CV_C;
    *c0 = j * CV_C;
}

/* Number of backward tasks (the partial buffer holds 2 * tasks * S * N scalars). */
long ssm_bwd_tasks(long nb, long D, long GB, long GC) {
    long F, per, cb, nblk;
    ssm_blocking_(nb, D, GB, GC, &F, &per, &cb, &nblk);
    return nb * F * nblk;
}

#define SSM_SCALAR float
#define SSM_SFX f32
#define SSM_EXP ssm_expf
#define SSM_LOG1P log1pf
#define SSM_EXPM1 expm1f
#include __FILE__
#undef SSM_SCALAR
#undef SSM_SFX
#undef SSM_EXP
#undef SSM_LOG1P
#undef SSM_EXPM1

#define SSM_SCALAR double
#define SSM_SFX f64
#define SSM_EXP exp
#define SSM_LOG1P log1p
#define SSM_EXPM1 expm1
#include __FILE__
#undef SSM_SCALAR
#undef SSM_SFX
#undef SSM_EXP
#undef SSM_LOG1P
#undef SSM_EXPM1

int ssm_abi_version(void) { return 16; }

#else /* template body */

#define SSM_CAT2(a, b) a##_##b
#define SSM_CAT(a, b) SSM_CAT2(a, b)
#define S SSM_SCALAR

/* Forward over all (b, d). chunk_states may be NULL (inference: nothing saved). */
void SSM_CAT(ssm_fwd, SSM_SFX)(const S *restrict u, const S *restrict dt, const S *restrict A,
                               const S *restrict B, const S *restrict C, const S *restrict h0,
                               S *restrict y, S *restrict h_last, S *restrict chunk_states,
                               long nb, long D, long L, long N, long GB, long GC, long T,
                               int nthreads) {
    const long K = (L + T - 1) / T;
    const long perB = D / GB, perC = D / GC;
    long task;
#pragma omp parallel for schedule(dynamic, SSM_BLOCK) num_threads(nthreads)
    for (task = 0; task < nb * D; task++) {
        const long bi = task / D, d = task % D;
        const S *ur = u + task * L, *dtr = dt + task * L, *Ar = A + d * N;
        const S *Bg = B + (bi * GB + d / perB) * L * N, *Cg = C + (bi * GC + d / perC) * L * N;
        S *yr = y + task * L;
        S *h = h_last + task * N;
        S *cs = chunk_states ? chunk_states + task * K * N : NULL;
        if (h0) memcpy(h, h0 + task * N, N * sizeof(S));
        else memset(h, 0, N * sizeof(S));
        for (long t = 0; t < L; t++) {
            if (cs && t % T == 0) memcpy(cs + (t / T) * N, h, N * sizeof(S));
            const S dtt = dtr[t], x = dtt * ur[t];
            const S *Bt = Bg + t * N, *Ct = Cg + t * N;
            S acc = 0;
#pragma omp simd reduction(+ : acc)
            for (long n = 0; n < N; n++) {
                const S hn = SSM_EXP(dtt * Ar[n]) * h[n] + x * Bt[n];
                h[n] = hn;
                acc += Ct[n] * hn;
            }
            yr[t] = acc;
        }
    }
}

/* Sum `nslot` consecutive slots of a partial buffer (slot stride `sstride`) into `out`, in slot
 * order: out[i] = p[0][i] + p[1][i] + ... for i < len. */
static void SSM_CAT(ssm_sum_slots, SSM_SFX)(S *restrict out, const S *restrict p, long nslot,
                                            long sstride, long len) {
    memcpy(out, p, len * sizeof(S));
    for (long j = 1; j < nslot; j++) {
        const S *q = p + j * sstride;
#pragma omp simd
        for (long i = 0; i < len; i++) out[i] += q[i];
    }
}

/* Backward. dh_last may be NULL; dh0 may be NULL.
 * Outputs: du, ddt (b, D, L); dA (D, N); dB (b, GB, L, N); dC (b, GC, L, N).
 * Scratch (caller-allocated, contents ignored):
 *   carry:  2 * b * D * N         (per row: the running E_{t+1} g_{t+1}, and dA of the row)
 *   part:   2 * ntask * S * N     (per task: its dB and dC contributions in one segment)
 *   work:   nthreads * 2 * T * N  (per thread: recomputed states and decays of one chunk)
 * with ntask = b * F * ceil((D / F) / min(SSM_BLOCK, D / F)), F = lcm(GB, GC); see
 * ssm_bwd_tasks. S is a multiple of T. */
void SSM_CAT(ssm_bwd, SSM_SFX)(const S *restrict u, const S *restrict dt, const S *restrict A,
                               const S *restrict B, const S *restrict C,
                               const S *restrict chunk_states, const S *restrict dy,
                               const S *restrict dh_last, S *restrict du, S *restrict ddt,
                               S *restrict dA, S *restrict dB, S *restrict dC, S *restrict dh0,
                               S *restrict carry, S *restrict part, S *restrict work,
                               long nb, long D, long L, long N, long GB, long GC, long T, long Sseg,
                               int nthreads) {
    const long K = (L + T - 1) / T;
    long F, per, cb, nblk; /* fine groups, channels per fine group, channels per task, tasks per group */
    ssm_blocking_(nb, D, GB, GC, &F, &per, &cb, &nblk);
    const long ntask = nb * F * nblk;
    const long perB = D / GB, perC = D / GC;
    const long slotsB = (F / GB) * nblk, slotsC = (F / GC) * nblk; /* slots summed into one group */
    const long nseg = (L + Sseg - 1) / Sseg;
    S *gcar = carry, *dArow = carry + nb * D * N;
    S *partB = part, *partC = part + ntask * Sseg * N;
    if (dh_last) memcpy(gcar, dh_last, (size_t)nb * D * N * sizeof(S));
    else memset(gcar, 0, (size_t)nb * D * N * sizeof(S));
    memset(dArow, 0, (size_t)nb * D * N * sizeof(S));
#pragma omp parallel num_threads(nthreads)
    {
        const long tid = ssm_thread_id();
        S *H = work + tid * 2 * T * N, *E = H + T * N;
        for (long seg = nseg - 1; seg >= 0; seg--) {
            const long s0 = seg * Sseg, s1 = (s0 + Sseg < L) ? s0 + Sseg : L;
            long task;
#pragma omp for schedule(dynamic, 1)
            for (task = 0; task < ntask; task++) {
                const long blk = task % nblk, bf = task / nblk; /* bf = bi * F + f */
                const long bi = bf / F, f = bf % F;
                const long d0 = f * per + blk * cb, d1 = (d0 + cb < (f + 1) * per) ? d0 + cb : (f + 1) * per;
                const S *Bg = B + (bi * GB + d0 / perB) * L * N, *Cg = C + (bi * GC + d0 / perC) * L * N;
                S *pB = partB + task * Sseg * N; /* step t of the segment at (t - s0) * N */
                S *pC = partC + task * Sseg * N;
                memset(pB, 0, (s1 - s0) * N * sizeof(S));
                memset(pC, 0, (s1 - s0) * N * sizeof(S));
                for (long d = d0; d < d1; d++) {
                    const long row = bi * D + d;
                    const S *ur = u + row * L, *dtr = dt + row * L, *dyr = dy + row * L, *Ar = A + d * N;
                    const S *cs = chunk_states + row * K * N;
                    S *dur = du + row * L, *ddtr = ddt + row * L;
                    S *gv = gcar + row * N, *dAacc = dArow + row * N; /* gv: the carry E_{t+1} g_{t+1} */
                    for (long k = (s1 - 1) / T; k >= s0 / T; k--) {
                        const long s = k * T, e = (s + T < L) ? s + T : L;
                        /* recompute the chunk: E[i] = exp(dt A), H[i] = h_{s+i} */
                        const S *hp = cs + k * N;
                        for (long i = 0; i < e - s; i++) {
                            const long t = s + i;
                            const S dtt = dtr[t], x = dtt * ur[t];
                            const S *Bt = Bg + t * N;
                            S *Ei = E + i * N, *Hi = H + i * N;
#pragma omp simd
                            for (long n = 0; n < N; n++) {
                                const S en = SSM_EXP(dtt * Ar[n]);
                                Ei[n] = en;
                                Hi[n] = en * hp[n] + x * Bt[n];
                            }
                            hp = Hi;
                        }
                        for (long i = e - s - 1; i >= 0; i--) {
                            const long t = s + i;
                            const S dtt = dtr[t], ut = ur[t], dyt = dyr[t], dtu = dtt * ut;
                            const S *Bt = Bg + t * N, *Ct = Cg + t * N;
                            const S *Ei = E + i * N, *Hi = H + i * N;
                            const S *Hp = i > 0 ? H + (i - 1) * N : cs + k * N;
                            S *dBt = pB + (t - s0) * N, *dCt = pC + (t - s0) * N;
                            S sB = 0, sA = 0;
#pragma omp simd reduction(+ : sB, sA)
                            for (long n = 0; n < N; n++) {
                                const S gn = Ct[n] * dyt + gv[n];
                                const S q = gn * Ei[n] * Hp[n];
                                sB += gn * Bt[n];
                                sA += Ar[n] * q;
                                dAacc[n] += dtt * q;
                                dBt[n] += gn * dtu;
                                dCt[n] += dyt * Hi[n];
                                gv[n] = Ei[n] * gn;
                            }
                            dur[t] = dtt * sB;
                            ddtr[t] = sA + ut * sB;
                        }
                    }
                }
            }
            /* (implicit barrier) reduce the slots of this segment in slot order */
            const long len = s1 - s0;
            long idx;
#pragma omp for schedule(static)
            for (idx = 0; idx < nb * GB; idx++) {
                const long bi = idx / GB, gb = idx % GB;
                const long first = (bi * F + gb * (F / GB)) * nblk; /* slots of this B group */
                SSM_CAT(ssm_sum_slots, SSM_SFX)(dB + (idx * L + s0) * N, partB + first * Sseg * N, slotsB,
                                                Sseg * N, len * N);
            }
#pragma omp for schedule(static)
            for (idx = 0; idx < nb * GC; idx++) {
                const long bi = idx / GC, gc = idx % GC;
                const long first = (bi * F + gc * (F / GC)) * nblk;
                SSM_CAT(ssm_sum_slots, SSM_SFX)(dC + (idx * L + s0) * N, partC + first * Sseg * N, slotsC,
                                                Sseg * N, len * N);
            }
            /* (implicit barrier) the partial buffer is free for the next segment */
        }
        long dn;
#pragma omp for schedule(static)
        for (dn = 0; dn < D * N; dn++) {
            S acc = dArow[dn];
            for (long bi = 1; bi < nb; bi++) acc += dArow[bi * D * N + dn];
            dA[dn] = acc;
        }
    }
    if (dh0) memcpy(dh0, gcar, (size_t)nb * D * N * sizeof(S));
}


/* ---------------------------------------------------------------------------------------------
 * Fused Mamba block kernels, channels-last. Rows are (b, t) pairs, row = b * L + t; a tensor
 * "(b, L, E) with row stride s" has element (row, c) at row * s + c. Work is cut into tasks of
 * one batch element and one block of MI_CB channels (the last block may be shorter); inside a
 * task the channel loops are the vector loops and B_t[n], C_t[n] are scalars.
 *
 * mi_fwd:  v = dtr + dbias, dt = softplus(v), h_t[n] = exp(dt A[n]) h_{t-1}[n] + dt u B_t[n],
 *          out = (sum_n C_t[n] h_t[n] + D u) * silu(z); dt is written back over dtr.
 * mi_bwd:  its reverse scan (the formulas of ssm_bwd plus the gate, the D skip and the softplus,
 *          whose derivative sigmoid(v) = 1 - exp(-dt) is computed from the stored dt).
 * cv_fwd:  u = silu(bias + sum_k w[k] x_{t-K+1+k}) (x_{<0} from the window, else 0)
 * cv_bwd:  its gradients.
 * A is passed transposed, At (N, E), so that a state index n reads E contiguous values.
 * --------------------------------------------------------------------------------------------- */

static inline S SSM_CAT(mi_sig, SSM_SFX)(S x) {
    x = x < (S)-80 ? (S)-80 : (x > (S)80 ? (S)80 : x);
    return (S)1 / ((S)1 + SSM_EXP(-x));
}

static inline S SSM_CAT(mi_softplus, SSM_SFX)(S v) {
    return v > (S)20 ? v : SSM_LOG1P(SSM_EXP(v < (S)-80 ? (S)-80 : v));
}

#define MI_SIG SSM_CAT(mi_sig, SSM_SFX)
#define MI_SOFTPLUS SSM_CAT(mi_softplus, SSM_SFX)

/* One task of mi_fwd: batch element bi, channels c0 .. c0 + cw - 1 (inlined twice, once with
 * cw = MI_CB known at compile time, so that full blocks run fixed-length vector loops). */
static inline __attribute__((always_inline)) void SSM_CAT(mi_fwd_task, SSM_SFX)(
        const S *restrict u, S *restrict dtr, const S *restrict dbias, const S *restrict At,
        const S *restrict xdbl, long sxd, long offB, const S *restrict Dv, const S *restrict z, long sz,
        const S *restrict h0, S *restrict out, S *restrict h_last, S *restrict states, S *restrict h,
        long E, long L, long N, long T, long K, long bi, long c0, const long cw) {
    S bl[MI_CB], Dl[MI_CB]; /* the block's dt bias and D (zeros when absent) */
    for (long c = 0; c < cw; c++) {
        bl[c] = dbias ? dbias[c0 + c] : (S)0;
        Dl[c] = Dv ? Dv[c0 + c] : (S)0;
    }
    for (long n = 0; n < N; n++)
        for (long c = 0; c < cw; c++) h[n * MI_CB + c] = h0 ? h0[(bi * E + c0 + c) * N + n] : (S)0;
    for (long t = 0; t < L; t++) {
        const long row = bi * L + t;
        if (states && t % T == 0)
            for (long n = 0; n < N; n++)
                memcpy(states + ((bi * K + t / T) * N + n) * E + c0, h + n * MI_CB, cw * sizeof(S));
        S dtv[MI_CB], xu[MI_CB], acc[MI_CB];
        const S *ur = u + row * E + c0;
        S *dr = dtr + row * E + c0;
#pragma omp simd
        for (long c = 0; c < cw; c++) {
            const S d = MI_SOFTPLUS(dr[c] + bl[c]);
            dr[c] = d; /* dtr now holds the step, read by the backward pass */
            dtv[c] = d;
            xu[c] = d * ur[c];
            acc[c] = 0;
        }
        const S *Bt = xdbl + row * sxd + offB, *Ct = Bt + N;
        for (long n = 0; n < N; n++) {
            const S bn = Bt[n], cn = Ct[n];
            const S *a = At + n * E + c0;
            S *hn = h + n * MI_CB;
#pragma omp simd
            for (long c = 0; c < cw; c++) {
                const S hv = SSM_EXP(dtv[c] * a[c]) * hn[c] + xu[c] * bn;
                hn[c] = hv;
                acc[c] += cn * hv;
            }
        }
        S *o = out + row * E + c0;
        if (z) {
            const S *zr = z + row * sz + c0;
#pragma omp simd
            for (long c = 0; c < cw; c++) o[c] = (acc[c] + Dl[c] * ur[c]) * zr[c] * MI_SIG(zr[c]);
        } else {
#pragma omp simd
            for (long c = 0; c < cw; c++) o[c] = acc[c] + Dl[c] * ur[c];
        }
    }
    for (long c = 0; c < cw; c++)
        for (long n = 0; n < N; n++) h_last[(bi * E + c0 + c) * N + n] = h[n * MI_CB + c];
}

/* Forward. dbias, Dv, z, h0, states may be NULL. xdbl: rows of stride sxd holding B_t at offB
 * and C_t at offB + N. z has row stride sz. out (b, L, E) contiguous; h_last (b, E, N);
 * states (b, K, N, E), the state before step k*T. work: nthreads * N * MI_CB scalars. */
void SSM_CAT(mi_fwd, SSM_SFX)(const S *restrict u, S *restrict dtr, const S *restrict dbias,
                              const S *restrict At, const S *restrict xdbl, long sxd, long offB,
                              const S *restrict Dv, const S *restrict z, long sz, const S *restrict h0,
                              S *restrict out, S *restrict h_last, S *restrict states, S *restrict work,
                              long nb, long E, long L, long N, long T, int nthreads) {
    const long K = (L + T - 1) / T;
    const long nblk = (E + MI_CB - 1) / MI_CB;
#pragma omp parallel num_threads(nthreads)
    {
        const long tid = ssm_thread_id();
        S *h = work + tid * N * MI_CB;
        long task;
#pragma omp for schedule(dynamic, 1)
        for (task = 0; task < nb * nblk; task++) {
            const long bi = task / nblk, c0 = (task % nblk) * MI_CB;
            const long cw = (E - c0 < MI_CB) ? E - c0 : MI_CB;
            if (cw == MI_CB)
                SSM_CAT(mi_fwd_task, SSM_SFX)(u, dtr, dbias, At, xdbl, sxd, offB, Dv, z, sz, h0, out, h_last, states, h,
                                              E, L, N, T, K, bi, c0, MI_CB);
            else
                SSM_CAT(mi_fwd_task, SSM_SFX)(u, dtr, dbias, At, xdbl, sxd, offB, Dv, z, sz, h0, out, h_last, states, h,
                                              E, L, N, T, K, bi, c0, cw);
        }
    }
}

/* One channel block of mi_bwd (inlined twice, as mi_fwd_task). */
static inline __attribute__((always_inline)) void SSM_CAT(mi_bwd_block, SSM_SFX)(
        const S *restrict u, const S *restrict dtr, const S *restrict dbias, const S *restrict At,
        const S *restrict xdbl, long sxd, long offB, const S *restrict Dv, const S *restrict z, long sz,
        const S *restrict states, const S *restrict dout, const S *restrict dh_last, S *restrict du,
        S *restrict ddtr, S *restrict dz, long sdz, S *restrict dh0, S *restrict acc, S *restrict H,
        S *restrict Eb, S *restrict hs, S *restrict gv, S *restrict pB,
        S *restrict pC, long E, long L, long N, long T, long K, long nblk, long bi, long blk, long c0,
        const long cw) {
    S *dAacc = acc + (bi * nblk + blk) * (N + 2) * MI_CB;
    S *dDacc = dAacc + N * MI_CB, *dbacc = dDacc + MI_CB;
    memset(dAacc, 0, (N + 2) * MI_CB * sizeof(S));
    S Dl[MI_CB];
    for (long c = 0; c < cw; c++) Dl[c] = Dv ? Dv[c0 + c] : (S)0;
    for (long n = 0; n < N; n++)
        for (long c = 0; c < cw; c++)
            gv[n * MI_CB + c] = dh_last ? dh_last[(bi * E + c0 + c) * N + n] : (S)0;
    for (long k = K - 1; k >= 0; k--) {
        const long s = k * T, e = (s + T < L) ? s + T : L;
        for (long n = 0; n < N; n++)
            memcpy(hs + n * MI_CB, states + ((bi * K + k) * N + n) * E + c0, cw * sizeof(S));
        /* recompute the chunk: Eb[i] = exp(dt A), H[i] = h_{s+i} */
        for (long i = 0; i < e - s; i++) {
            const long row = bi * L + s + i;
            const S *ur = u + row * E + c0, *dti = dtr + row * E + c0; /* dtr holds the steps */
            S xu[MI_CB];
#pragma omp simd
            for (long c = 0; c < cw; c++) xu[c] = dti[c] * ur[c];
            const S *Bt = xdbl + row * sxd + offB;
            for (long n = 0; n < N; n++) {
                const S bn = Bt[n];
                const S *a = At + n * E + c0;
                const S *hp = i > 0 ? H + ((i - 1) * N + n) * MI_CB : hs + n * MI_CB;
                S *Ein = Eb + (i * N + n) * MI_CB, *Hin = H + (i * N + n) * MI_CB;
#pragma omp simd
                for (long c = 0; c < cw; c++) {
                    const S en = SSM_EXP(dti[c] * a[c]);
                    Ein[c] = en;
                    Hin[c] = en * hp[c] + xu[c] * bn;
                }
            }
        }
        for (long i = e - s - 1; i >= 0; i--) {
            const long t = s + i, row = bi * L + t;
            const S *ur = u + row * E + c0, *dor = dout + row * E + c0;
            const S *dti = dtr + row * E + c0;
            const S *Bt = xdbl + row * sxd + offB, *Ct = Bt + N;
            S dy[MI_CB], dtu[MI_CB], sB[MI_CB], sA[MI_CB], yc[MI_CB];
            for (long c = 0; c < cw; c++) yc[c] = 0;
            if (z) {
                for (long n = 0; n < N; n++) {
                    const S cn = Ct[n];
                    const S *Hin = H + (i * N + n) * MI_CB;
#pragma omp simd
                    for (long c = 0; c < cw; c++) yc[c] += cn * Hin[c];
                }
            }
            if (z) {
                const S *zr = z + row * sz + c0;
                S *dzr = dz + row * sdz + c0;
#pragma omp simd
                for (long c = 0; c < cw; c++) {
                    const S zz = zr[c], sg = MI_SIG(zz);
                    dzr[c] = dor[c] * (yc[c] + Dl[c] * ur[c]) * sg * ((S)1 + zz * ((S)1 - sg));
                    dy[c] = dor[c] * zz * sg;
                }
            } else {
                for (long c = 0; c < cw; c++) dy[c] = dor[c];
            }
#pragma omp simd
            for (long c = 0; c < cw; c++) {
                const S dyv = dy[c];
                dDacc[c] += dyv * ur[c];
                dtu[c] = dti[c] * ur[c];
                sB[c] = 0;
                sA[c] = 0;
            }
            for (long n = 0; n < N; n++) {
                const S bn = Bt[n], cn = Ct[n];
                const S *a = At + n * E + c0;
                const S *Ein = Eb + (i * N + n) * MI_CB, *Hin = H + (i * N + n) * MI_CB;
                const S *Hp = i > 0 ? H + ((i - 1) * N + n) * MI_CB : hs + n * MI_CB;
                S *gn = gv + n * MI_CB, *dAn = dAacc + n * MI_CB;
                S rb = 0, rc = 0;
#pragma omp simd reduction(+ : rb, rc)
                for (long c = 0; c < cw; c++) {
                    const S g = cn * dy[c] + gn[c];
                    const S q = g * Ein[c] * Hp[c];
                    sB[c] += g * bn;
                    sA[c] += a[c] * q;
                    dAn[c] += dti[c] * q;
                    rb += g * dtu[c];
                    rc += dy[c] * Hin[c];
                    gn[c] = Ein[c] * g;
                }
                pB[t * N + n] += rb;
                pC[t * N + n] += rc;
            }
            S *dur = du + row * E + c0, *ddr = ddtr + row * E + c0;
#pragma omp simd
            for (long c = 0; c < cw; c++) {
                dur[c] = dy[c] * Dl[c] + dti[c] * sB[c];
                /* d softplus(v) / dv = sigmoid(v) = 1 - exp(-softplus(v)) */
                const S dv = (sA[c] + ur[c] * sB[c]) * -SSM_EXPM1(-dti[c]);
                ddr[c] = dv;
                dbacc[c] += dv;
            }
        }
    }
    if (dh0)
        for (long c = 0; c < cw; c++)
            for (long n = 0; n < N; n++) dh0[(bi * E + c0 + c) * N + n] = gv[n * MI_CB + c];
}

/* Backward of mi_fwd (dtr: the steps dt as mi_fwd left them). Tasks are (batch element, group of ngrp channel blocks) (ngrp is chosen
 * from the shapes only); each task writes its dB, dC terms into its own slot of part, and the
 * slots, like the per-block dA, dD, dbias slots in acc, are summed in index order: gradients do
 * not depend on the thread count. Inputs as in mi_fwd plus states (required), dout (b, L, E) and dh_last
 * (b, E, N) or NULL. Outputs: du, ddtr (b, L, E) contiguous (ddtr is the gradient of dtr, i.e.
 * of v); dz (row stride sdz; only if z); dxdbl's B and C columns (row stride sdx, at offB and
 * offB + N); dAt (N, E); dD (E) if Dv; ddbias (E) if dbias; dh0 (b, E, N) or NULL.
 * Scratch: part 2 * nb * ngrp * L * N; acc nb * nblk * (N + 2) * MI_CB;
 * work nthreads * (2 * T * N + 2 * N) * MI_CB. */
void SSM_CAT(mi_bwd, SSM_SFX)(const S *restrict u, const S *restrict dtr, const S *restrict dbias,
                              const S *restrict At, const S *restrict xdbl, long sxd, long offB,
                              const S *restrict Dv, const S *restrict z, long sz,
                              const S *restrict states, const S *restrict dout, const S *restrict dh_last,
                              S *restrict du, S *restrict ddtr, S *restrict dz, long sdz,
                              S *restrict dxdbl, long sdx, S *restrict dAt, S *restrict dD,
                              S *restrict ddbias, S *restrict dh0, S *restrict part, S *restrict acc,
                              S *restrict work, long nb, long E, long L, long N, long T, long ngrp,
                              int nthreads) {
    const long K = (L + T - 1) / T;
    const long nblk = (E + MI_CB - 1) / MI_CB;
    const long bpg = (nblk + ngrp - 1) / ngrp; /* blocks per group */
    const long ntask = nb * ngrp;
    S *partB = part, *partC = part + ntask * L * N;
#pragma omp parallel num_threads(nthreads)
    {
        const long tid = ssm_thread_id();
        S *H = work + tid * (2 * T * N + 2 * N) * MI_CB;
        S *Eb = H + T * N * MI_CB, *hs = Eb + T * N * MI_CB, *gv = hs + N * MI_CB;
        long task;
#pragma omp for schedule(dynamic, 1)
        for (task = 0; task < ntask; task++) {
            const long bi = task / ngrp, gi = task % ngrp;
            S *pB = partB + task * L * N, *pC = partC + task * L * N;
            memset(pB, 0, L * N * sizeof(S));
            memset(pC, 0, L * N * sizeof(S));
            const long b0 = gi * bpg, b1 = (b0 + bpg < nblk) ? b0 + bpg : nblk;
            for (long blk = b0; blk < b1; blk++) {
                const long c0 = blk * MI_CB;
                const long cw = (E - c0 < MI_CB) ? E - c0 : MI_CB;
                if (cw == MI_CB)
                    SSM_CAT(mi_bwd_block, SSM_SFX)(u, dtr, dbias, At, xdbl, sxd, offB, Dv, z, sz, states, dout, dh_last,
                                                   du, ddtr, dz, sdz, dh0, acc, H, Eb, hs, gv, pB, pC,
                                                   E, L, N, T, K, nblk, bi, blk, c0, MI_CB);
                else
                    SSM_CAT(mi_bwd_block, SSM_SFX)(u, dtr, dbias, At, xdbl, sxd, offB, Dv, z, sz, states, dout, dh_last,
                                                   du, ddtr, dz, sdz, dh0, acc, H, Eb, hs, gv, pB, pC,
                                                   E, L, N, T, K, nblk, bi, blk, c0, cw);
            }
        }
        /* (implicit barrier) reductions in a fixed order */
        long r;
#pragma omp for schedule(static)
        for (r = 0; r < nb * L; r++) {
            const long bi = r / L, t = r % L;
            S *ob = dxdbl + r * sdx + offB, *oc = ob + N;
            for (long n = 0; n < N; n++) {
                S sb = 0, sc = 0;
                for (long g = 0; g < ngrp; g++) {
                    sb += partB[((bi * ngrp + g) * L + t) * N + n];
                    sc += partC[((bi * ngrp + g) * L + t) * N + n];
                }
                ob[n] = sb;
                oc[n] = sc;
            }
        }
#pragma omp for schedule(static)
        for (r = 0; r < E; r++) {
            const long blk = r / MI_CB, c = r % MI_CB;
            for (long n = 0; n < N + 2; n++) {
                S sum = 0;
                for (long bi = 0; bi < nb; bi++) sum += acc[((bi * nblk + blk) * (N + 2) + n) * MI_CB + c];
                if (n < N) dAt[n * E + r] = sum;
                else if (n == N) { if (dD) dD[r] = sum; }
                else if (ddbias) ddbias[r] = sum;
            }
        }
    }
}

/* The conv kernels work row by row: a task is one batch element and a chunk of at most CV_C
 * contiguous channels, and reads its input rows (stride sx) where they are, so each step reads
 * one new row of the chunk and finds the K-1 before it in L1. */

/* input row tau of batch element bi at channel c0: a window row for tau < 0 (NULL: zeros) */
static inline const S *SSM_CAT(cv_row, SSM_SFX)(const S *x, long sx, const S *win, long bi, long tau, long c0,
                                                long E, long L, long K) {
    if (tau >= 0) return x + (bi * L + tau) * sx + c0;
    return win ? win + (bi * (K - 1) + tau + K - 1) * E + c0 : NULL;
}

static const S SSM_CAT(cv_zeros, SSM_SFX)[CV_C]; /* stands in for a missing row or bias */

/* the K input rows of step t (x_{t-K+1+k}, k < K) at channel c0; zeros where there is no row */
static inline void SSM_CAT(cv_rows, SSM_SFX)(const S **xr, const S *x, long sx, const S *win, long bi, long t,
                                             long c0, long E, long L, long K) {
    for (long k = 0; k < K; k++) {
        const S *r = SSM_CAT(cv_row, SSM_SFX)(x, sx, win, bi, t - K + 1 + k, c0, E, L, K);
        xr[k] = r ? r : SSM_CAT(cv_zeros, SSM_SFX);
    }
}

/* a[c] += sum_k w[k] r_k[c] over k < K, tap by tap (any K; the K = 4 loops below keep the sum in a register) */
static inline void SSM_CAT(cv_taps, SSM_SFX)(S *restrict a, const S **r, const S *restrict wt, long c0, long cw,
                                             long E, long K) {
    for (long k = 0; k < K; k++) {
        const S *restrict w = wt + k * E + c0, *restrict rk = r[k];
#pragma omp simd
        for (long c = 0; c < cw; c++) a[c] += w[c] * rk[c];
    }
}

/* one task of cv_fwd: batch element bi, channels c0 .. c0 + cw */
static inline __attribute__((always_inline)) void SSM_CAT(cv_fwd_task, SSM_SFX)(
    const S *x, long sx, const S *restrict wt, const S *restrict bias, const S *win, S *restrict u, long bi,
    long c0, const long cw, long E, long L, const long K) {
    const S *xr[K], *bs = bias ? bias + c0 : SSM_CAT(cv_zeros, SSM_SFX);
    for (long t = 0; t < L; t++) {
        S *restrict o = u + (bi * L + t) * E + c0;
        SSM_CAT(cv_rows, SSM_SFX)(xr, x, sx, win, bi, t, c0, E, L, K);
        if (K == 4) {
#pragma omp simd
            for (long c = 0; c < cw; c++) {
                S a = bs[c];
                for (long k = 0; k < 4; k++) a += wt[k * E + c0 + c] * xr[k][c];
                o[c] = a * MI_SIG(a);
            }
        } else {
            memcpy(o, bs, cw * sizeof(S));
            SSM_CAT(cv_taps, SSM_SFX)(o, xr, wt, c0, cw, E, K);
#pragma omp simd
            for (long c = 0; c < cw; c++) o[c] *= MI_SIG(o[c]);
        }
    }
}

/* one (batch element, chunk of channels) task of cv_fwd, its loops specialised: a full chunk and the
 * usual width K = 4 run loops of fixed lengths with the taps unrolled */
static void SSM_CAT(cv_fwd_run, SSM_SFX)(const S *x, long sx, const S *wt, const S *bias, const S *win, S *u,
                                         long bi, long c0, long E, long L, long K) {
    if (E - c0 >= CV_C && K == 4)
        SSM_CAT(cv_fwd_task, SSM_SFX)(x, sx, wt, bias, win, u, bi, c0, CV_C, E, L, 4);
    else if (K == 4)
        SSM_CAT(cv_fwd_task, SSM_SFX)(x, sx, wt, bias, win, u, bi, c0, E - c0, E, L, 4);
    else
        SSM_CAT(cv_fwd_task, SSM_SFX)(x, sx, wt, bias, win, u, bi, c0, E - c0 < CV_C ? E - c0 : CV_C, E, L, K);
}

/* cv_fwd for np parts of x (b, L, ·) with row stride sx: part p is the columns col[p] ..
 * col[p] + width[p] - 1 with its own taps wt[p] (K, width[p]), bias[p] (width[p]) or NULL,
 * window win[p] (b, K-1, width[p]) or NULL, and output u[p] (b, L, width[p]) */
void SSM_CAT(cv_fwd_parts, SSM_SFX)(const S *x, long sx, long np, const long *col, const long *width,
                                    const S *const *wt, const S *const *bias, const S *const *win, S *const *u,
                                    long nb, long L, long K, int nthreads) {
    const long per = cv_part_tasks(np, width);
    long task;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (task = 0; task < nb * per; task++) {
        long bi, p, c0;
        cv_part_task(task, per, np, width, &bi, &p, &c0);
        SSM_CAT(cv_fwd_run, SSM_SFX)(x + col[p], sx, wt[p], bias[p], win[p], u[p], bi, c0, width[p], L, K);
    }
}

/* u (b, L, E) = silu(causal conv of the E channels of x (b, L, ·), row stride sx): one part */
void SSM_CAT(cv_fwd, SSM_SFX)(const S *x, long sx, const S *wt, const S *bias, const S *win, S *u, long nb,
                              long E, long L, long K, int nthreads) {
    const long col = 0;
    SSM_CAT(cv_fwd_parts, SSM_SFX)(x, sx, 1, &col, &E, &wt, &bias, &win, &u, nb, L, K, nthreads);
}

/* one task of cv_bwd: batch element bi, channels c0 .. c0 + cw (dx, dwin: rows not overlapping x or du) */
static inline __attribute__((always_inline)) void SSM_CAT(cv_bwd_task, SSM_SFX)(
    const S *x, long sx, const S *restrict wt, const S *restrict bias, const S *win, const S *restrict du, S *dx,
    long sdx, S *dwin, S *restrict part, S *restrict dp, long bi, long c0, const long cw, long E, long L,
    const long K) {
    S *restrict pw = part + bi * (K + 1) * E + c0; /* rows k < K: dw[k], row K: dbias */
    const S *xr[K], *bs = bias ? bias + c0 : SSM_CAT(cv_zeros, SSM_SFX);
    S a[CV_C];
    for (long k = 0; k <= K; k++)
        for (long c = 0; c < cw; c++) pw[k * E + c] = 0;
    for (long t = 0; t < L; t++) { /* dpre_t; dbias and dw[k] += dpre_t x_{t-K+1+k} */
        const S *restrict g = du + (bi * L + t) * E + c0;
        S *restrict d = dp + t * CV_C, *restrict pb = pw + K * E;
        SSM_CAT(cv_rows, SSM_SFX)(xr, x, sx, win, bi, t, c0, E, L, K);
        if (K == 4) {
#pragma omp simd
            for (long c = 0; c < cw; c++) {
                S p = bs[c];
                for (long k = 0; k < 4; k++) p += wt[k * E + c0 + c] * xr[k][c];
                const S sg = MI_SIG(p);
                const S v = g[c] * sg * ((S)1 + p * ((S)1 - sg));
                d[c] = v;
                pb[c] += v;
                for (long k = 0; k < 4; k++) pw[k * E + c] += v * xr[k][c];
            }
        } else {
            memcpy(a, bs, cw * sizeof(S));
            SSM_CAT(cv_taps, SSM_SFX)(a, xr, wt, c0, cw, E, K);
#pragma omp simd
            for (long c = 0; c < cw; c++) {
                const S sg = MI_SIG(a[c]);
                d[c] = g[c] * sg * ((S)1 + a[c] * ((S)1 - sg));
                pb[c] += d[c];
            }
            for (long k = 0; k < K; k++) {
                S *restrict p = pw + k * E;
                const S *restrict r = xr[k];
#pragma omp simd
                for (long c = 0; c < cw; c++) p[c] += d[c] * r[c];
            }
        }
    }
    /* dx_tau = sum_k w[k] dpre_{tau+K-1-k}, tau from -(K-1) (window rows) to L-1 */
    for (long tau = -(K - 1); tau < L; tau++) {
        S *restrict o = tau >= 0 ? dx + (bi * L + tau) * sdx + c0
                                 : (dwin ? dwin + (bi * (K - 1) + tau + K - 1) * E + c0 : NULL);
        if (!o) continue;
        const S *dr[K]; /* dpre_{tau+K-1-k}, zeros outside 0 .. L-1 */
        for (long k = 0; k < K; k++) {
            const long j = tau + K - 1 - k;
            dr[k] = (j < 0 || j >= L) ? SSM_CAT(cv_zeros, SSM_SFX) : dp + j * CV_C;
        }
        if (K == 4) {
#pragma omp simd
            for (long c = 0; c < cw; c++) {
                S v = 0;
                for (long k = 0; k < 4; k++) v += wt[k * E + c0 + c] * dr[k][c];
                o[c] = v;
            }
        } else {
            memset(o, 0, cw * sizeof(S));
            SSM_CAT(cv_taps, SSM_SFX)(o, dr, wt, c0, cw, E, K);
        }
    }
}

static void SSM_CAT(cv_bwd_run, SSM_SFX)(const S *x, long sx, const S *wt, const S *bias, const S *win,
                                         const S *du, S *dx, long sdx, S *dwin, S *part, S *dp, long bi, long c0,
                                         long E, long L, long K) {
    if (E - c0 >= CV_C && K == 4) /* as in cv_fwd_run */
        SSM_CAT(cv_bwd_task, SSM_SFX)(x, sx, wt, bias, win, du, dx, sdx, dwin, part, dp, bi, c0, CV_C, E, L, 4);
    else if (K == 4)
        SSM_CAT(cv_bwd_task, SSM_SFX)(x, sx, wt, bias, win, du, dx, sdx, dwin, part, dp, bi, c0, E - c0, E, L, 4);
    else
        SSM_CAT(cv_bwd_task, SSM_SFX)(x, sx, wt, bias, win, du, dx, sdx, dwin, part, dp, bi, c0,
                                      E - c0 < CV_C ? E - c0 : CV_C, E, L, K);
}

/* Backward of cv_fwd_parts. Per part p: du[p] (b, L, width[p]) contiguous; the gradient of x's
 * columns col[p] .. into dx + col[p] (rows of stride sdx); dwin[p] (b, K-1, width[p]) or NULL;
 * dwt[p] (K, width[p]) and dbias[p] (width[p]) (may be NULL) summed over the batch in index order
 * from the batch elements' slots in part[p] (nb * (K + 1) * width[p] scalars), each summed over t
 * in order: the same numbers for any thread count. work: nthreads * L * CV_C scalars (a task's
 * dpre rows). */
void SSM_CAT(cv_bwd_parts, SSM_SFX)(const S *x, long sx, long np, const long *col, const long *width,
                                    const S *const *wt, const S *const *bias, const S *const *win,
                                    const S *const *du, S *dx, long sdx, S *const *dwin, S *const *dwt,
                                    S *const *dbias, S *const *part, S *restrict work, long nb, long L, long K,
                                    int nthreads) {
    const long per = cv_part_tasks(np, width);
#pragma omp parallel num_threads(nthreads)
    {
        S *restrict dp = work + ssm_thread_id() * L * CV_C; /* dpre_t at dp + t * CV_C */
        long task;
#pragma omp for schedule(static)
        for (task = 0; task < nb * per; task++) {
            long bi, p, c0;
            cv_part_task(task, per, np, width, &bi, &p, &c0);
            SSM_CAT(cv_bwd_run, SSM_SFX)(x + col[p], sx, wt[p], bias[p], win[p], du[p], dx + col[p], sdx, dwin[p],
                                         part[p], dp, bi, c0, width[p], L, K);
        }
        /* (implicit barrier) sum each part's slots over the batch in index order */
        for (long p = 0; p < np; p++) {
            const long E = width[p];
            long r;
#pragma omp for schedule(static)
            for (r = 0; r < E; r++)
                for (long k = 0; k <= K; k++) {
                    S sum = 0;
                    for (long bi = 0; bi < nb; bi++) sum += part[p][(bi * (K + 1) + k) * E + r];
                    if (k < K) dwt[p][k * E + r] = sum;
                    else if (dbias[p]) dbias[p][r] = sum;
                }
        }
    }
}

/* Backward of cv_fwd (one part). du (b, L, E) contiguous; dx rows of stride sdx; dwin (b, K-1, E)
 * or NULL; dwt (K, E), dbias (E) or NULL, part (nb * (K + 1) * E scalars) and work as above. */
void SSM_CAT(cv_bwd, SSM_SFX)(const S *x, long sx, const S *wt, const S *bias, const S *win, const S *du, S *dx,
                              long sdx, S *dwin, S *dwt, S *dbias, S *part, S *work, long nb, long E, long L, long K,
                              int nthreads) {
    const long col = 0;
    SSM_CAT(cv_bwd_parts, SSM_SFX)(x, sx, 1, &col, &E, &wt, &bias, &win, &du, dx, sdx, &dwin, &dwt, &dbias, &part,
                                   work, nb, L, K, nthreads);
}

/* ---------------------------------------------------------------------------------------------
 * Time-invariant diagonal linear scan (ssmkit.ops.scan, S5): h_t = a ⊙ h_{t-1} + b_t over
 * (b, L, M) with one step a (M) for every time and batch entry; complex values are interleaved
 * (re, im) pairs when cplx is 1. lti_fwd: all states; lti_bwd: g_t = gh_t + conj(a) g_{t+1},
 * da = sum_{b, t} g_t conj(h_{t-1}) (h_{-1} = h0 or 0), dh0 = conj(a) g_0. The batch sum of da
 * is taken in index order from per-sequence slots (no dependence on the thread count).
 * --------------------------------------------------------------------------------------------- */
void SSM_CAT(lti_fwd, SSM_SFX)(const S *restrict a, const S *restrict b, const S *restrict h0, S *restrict hs,
                               long nb, long L, long M, int cplx, int nthreads) {
    const long W = cplx ? 2 * M : M;
    long bi;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (bi = 0; bi < nb; bi++) {
        const S *br = b + bi * L * W;
        S *hr = hs + bi * L * W;
        for (long t = 0; t < L; t++) {
            const S *p = t ? hr + (t - 1) * W : (h0 ? h0 + bi * W : NULL);
            const S *bt = br + t * W;
            S *ht = hr + t * W;
            if (!p) {
                memcpy(ht, bt, W * sizeof(S));
            } else if (cplx) {
#pragma omp simd
                for (long m = 0; m < M; m++) {
                    const S ar = a[2 * m], ai = a[2 * m + 1], pr = p[2 * m], pi = p[2 * m + 1];
                    ht[2 * m] = ar * pr - ai * pi + bt[2 * m];
                    ht[2 * m + 1] = ar * pi + ai * pr + bt[2 * m + 1];
                }
            } else {
#pragma omp simd
                for (long m = 0; m < M; m++) ht[m] = a[m] * p[m] + bt[m];
            }
        }
    }
}

/* gh, g: (b, L, M[, 2]); da (M[, 2]); dh0 (b, M[, 2]) or NULL; part: nb * W scratch. */
void SSM_CAT(lti_bwd, SSM_SFX)(const S *restrict a, const S *restrict hs, const S *restrict h0,
                               const S *restrict gh, S *restrict g, S *restrict da, S *restrict dh0,
                               S *restrict part, long nb, long L, long M, int cplx, int nthreads) {
    const long W = cplx ? 2 * M : M;
#pragma omp parallel num_threads(nthreads)
    {
        long bi;
#pragma omp for schedule(static)
        for (bi = 0; bi < nb; bi++) {
            const S *ghr = gh + bi * L * W, *hr = hs + bi * L * W;
            S *gr = g + bi * L * W, *pa = part + bi * W;
            memset(pa, 0, W * sizeof(S));
            for (long t = L - 1; t >= 0; t--) {
                const S *gt_in = ghr + t * W;
                S *gt = gr + t * W;
                if (t == L - 1 || t == 0) { /* the ends: no g_{t+1}, or maybe no h_{t-1} */
                    const S *nx = t < L - 1 ? gr + (t + 1) * W : NULL;
                    const S *p = t ? hr + (t - 1) * W : (h0 ? h0 + bi * W : NULL);
                    for (long m = 0; m < M; m++) {
                        if (cplx) {
                            S xr = gt_in[2 * m], xi = gt_in[2 * m + 1];
                            if (nx) { /* + conj(a) g_{t+1} */
                                xr += a[2 * m] * nx[2 * m] + a[2 * m + 1] * nx[2 * m + 1];
                                xi += a[2 * m] * nx[2 * m + 1] - a[2 * m + 1] * nx[2 * m];
                            }
                            gt[2 * m] = xr;
                            gt[2 * m + 1] = xi;
                            if (p) { /* + g conj(h_{t-1}) */
                                pa[2 * m] += xr * p[2 * m] + xi * p[2 * m + 1];
                                pa[2 * m + 1] += xi * p[2 * m] - xr * p[2 * m + 1];
                            }
                        } else {
                            const S x = gt_in[m] + (nx ? a[m] * nx[m] : (S)0);
                            gt[m] = x;
                            if (p) pa[m] += x * p[m];
                        }
                    }
                    continue;
                }
                const S *nx = gr + (t + 1) * W, *p = hr + (t - 1) * W;
                if (cplx) {
#pragma omp simd
                    for (long m = 0; m < M; m++) {
                        const S ar = a[2 * m], ai = a[2 * m + 1], nr = nx[2 * m], ni = nx[2 * m + 1];
                        const S xr = gt_in[2 * m] + ar * nr + ai * ni, xi = gt_in[2 * m + 1] + ar * ni - ai * nr;
                        gt[2 * m] = xr;
                        gt[2 * m + 1] = xi;
                        pa[2 * m] += xr * p[2 * m] + xi * p[2 * m + 1];
                        pa[2 * m + 1] += xi * p[2 * m] - xr * p[2 * m + 1];
                    }
                } else {
#pragma omp simd
                    for (long m = 0; m < M; m++) {
                        const S x = gt_in[m] + a[m] * nx[m];
                        gt[m] = x;
                        pa[m] += x * p[m];
                    }
                }
            }
            if (dh0) {
                const S *g0 = gr;
                S *d = dh0 + bi * W;
                if (cplx) {
                    for (long m = 0; m < M; m++) {
                        const S ar = a[2 * m], ai = a[2 * m + 1];
                        d[2 * m] = ar * g0[2 * m] + ai * g0[2 * m + 1];
                        d[2 * m + 1] = ar * g0[2 * m + 1] - ai * g0[2 * m];
                    }
                } else {
                    for (long m = 0; m < M; m++) d[m] = a[m] * g0[m];
                }
            }
        }
        long w;
#pragma omp for schedule(static)
        for (w = 0; w < W; w++) {
            S s = 0;
            for (long bi2 = 0; bi2 < nb; bi2++) s += part[bi2 * W + w];
            da[w] = s;
        }
    }
}

#undef MI_SIG
#undef MI_SOFTPLUS

#undef S
#undef SSM_CAT
#undef SSM_CAT2

#endif
