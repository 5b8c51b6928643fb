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
 * The file is a template: it includes itself twice, once per scalar type.
 */
#ifndef SSM_SCALAR

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define SSM_BLOCK 8

/* exp for float32, inlined so that the loops over N vectorise without a library call:
 * exp(x) = 2^k exp(r), k = round(x / ln 2), r = x - k ln 2 (ln 2 split in two for an exact
 * product), exp(r) on |r| <= ln(2)/2 by a degree-7 polynomial (minimax coefficients as in
 * Cephes' expf), relative error ~1 ulp. x is clamped to [-87, 88] so 2^k stays a normal
 * float; for x < -87 this returns ~1.6e-38 instead of a denormal or zero. */
static inline float ssm_expf(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float k = floorf(x * 1.44269504088896341f + 0.5f);
    const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int bits = ((int)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

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

/* Number of backward tasks (the partial buffer holds 2 * tasks * S * N scalars). */
long ssm_bwd_tasks(long nb, long D, long GB, long GC) {
    long F, per, cb, nblk;
    ssm_blocking_(nb, D, GB, GC, &F, &per, &cb, &nblk);
    return nb * F * nblk;
}

#define SSM_SCALAR float
#define SSM_SFX f32
#define SSM_EXP ssm_expf
#include __FILE__
#undef SSM_SCALAR
#undef SSM_SFX
#undef SSM_EXP

#define SSM_SCALAR double
#define SSM_SFX f64
#define SSM_EXP exp
#include __FILE__
#undef SSM_SCALAR
#undef SSM_SFX
#undef SSM_EXP

int ssm_abi_version(void) { return 3; }

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
#ifdef _OPENMP
        const long tid = omp_get_thread_num();
#else
        const long tid = 0;
#endif
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

#undef S
#undef SSM_CAT
#undef SSM_CAT2

#endif
