/* The rank-1 Woodbury step of the real S4 kernel (ssmkit.kernels.cauchy), forward and backward,
 * elementwise over the frequencies j < J of channels h < H. From the four Cauchy sums
 * k = (k_cb, k_cp, k_qb, k_qp) (4, H, J) and the step dt (H):
 *     s = dt (1 + z_j) / 2,  z_j = exp(-2 pi i j / L),  D = 1 + s k_qp,  corr = k_cp k_qb / D,
 *     Khat = dt (k_cb - s corr)
 * Backward, from F = rfft(dLoss/dK) (H, J) (L / c_j times the gradient of Khat, c_j = 1 at bins 0
 * and L/2, else 2):
 *     Y_x = F conj(df/dk_x)   (the gradient of the Vandermonde sequence x is irfft(Y_x); for x = cb
 *                              that is dt dLoss/dK, which needs no FFT: Y holds x = cp, qb, qp),
 *     df/dk_cb = dt, df/dk_cp = -dt s k_qb / D, df/dk_qb = -dt s k_cp / D, df/dk_qp = dt s^2 corr / D,
 *     gdt = sum_j (c_j / L) Re(conj(F_j) (k_cb - 2 s corr + s^2 corr k_qp / D)).
 * Complex numbers are (re, im) float pairs, computed in float (as torch's complex64 path does),
 * vectorised over the frequencies. Threads split the channels; each
 * channel's sum has one fixed order, so the results do not depend on the number of threads. */
#include <math.h>
#include <stdlib.h>

#include "native_common.h"

#define S4W_PI 3.14159265358979323846

/* (1 + z_j) for j < J as two float arrays (re, then im): 2J values, NULL if the allocation fails */
static float *opz_table(long J, long L) {
    float *t = (float *)malloc((size_t)(2 * (J > 0 ? J : 1)) * sizeof(float));
    if (!t) return NULL;
    for (long j = 0; j < J; j++) {
        const double th = -2.0 * S4W_PI * (double)j / (double)L;
        t[j] = (float)(1.0 + cos(th));
        t[J + j] = (float)sin(th);
    }
    return t;
}

/* complex product (ar + i ai)(br + i bi) -> (*r, *i) */
#define CMUL(ar, ai, br, bi, r, i) do { const float r_ = (ar) * (br) - (ai) * (bi); (i) = (ar) * (bi) + (ai) * (br); (r) = r_; } while (0)

/* channel h's four sums in k (4, H, J): the row of each, (re, im) pairs */
static inline void s4w_sums(const float *k, long H, long J, long h, const float **cb, const float **cp,
                            const float **qb, const float **qp) {
    *cb = k + 2 * h * J;
    *cp = *cb + 2 * H * J;
    *qb = *cb + 4 * H * J;
    *qp = *cb + 6 * H * J;
}

/* at frequency j: u = s / D and v = s corr = u k_cp k_qb, with s = (dt / 2)(1 + z_j), D = 1 + s k_qp */
static inline __attribute__((always_inline)) void s4w_terms(float hd, const float *opz, long J, long j,
                                                            const float *cp, const float *qb, const float *qp,
                                                            float *ur, float *ui, float *vr, float *vi) {
    const float sr = hd * opz[j], si = hd * opz[J + j];
    float tr, ti, pr, pi, a, b;
    CMUL(sr, si, qp[2 * j], qp[2 * j + 1], tr, ti); /* s k_qp */
    const float Dr = 1.0f + tr, Di = ti, n = 1.0f / (Dr * Dr + Di * Di);
    CMUL(sr, si, Dr * n, -Di * n, a, b);
    CMUL(cp[2 * j], cp[2 * j + 1], qb[2 * j], qb[2 * j + 1], pr, pi);
    *ur = a; *ui = b;
    CMUL(pr, pi, a, b, *vr, *vi);
}

int s4w_fwd_f32(const float *k, const float *dt, float *khat, long H, long J, long L, int nthreads) {
    float *opz = opz_table(J, L);
    if (!opz) return 1;
    const int nth = nthreads > 0 ? nthreads : 1;
#pragma omp parallel for schedule(static) num_threads(nth)
    for (long h = 0; h < H; h++) {
        const float d = dt[h], hd = 0.5f * dt[h];
        const float *cb, *cp, *qb, *qp;
        s4w_sums(k, H, J, h, &cb, &cp, &qb, &qp);
        float *out = khat + 2 * h * J;
#pragma omp simd
        for (long j = 0; j < J; j++) {
            float ur, ui, vr, vi;
            s4w_terms(hd, opz, J, j, cp, qb, qp, &ur, &ui, &vr, &vi);
            out[2 * j] = d * (cb[2 * j] - vr);
            out[2 * j + 1] = d * (cb[2 * j + 1] - vi);
        }
    }
    free(opz);
    return 0;
}

/* Y (3, H, J) complex (the sums cp, qb, qp) and gdt (H) real; either may be NULL (not wanted). Two
 * loops (one per output) rather than one with a branch: each vectorises. */
int s4w_bwd_f32(const float *k, const float *dt, const float *F, float *Y, float *gdt, long H, long J, long L,
                int nthreads) {
    float *opz = opz_table(J, L);
    if (!opz) return 1;
    const int nth = nthreads > 0 ? nthreads : 1;
#pragma omp parallel for schedule(static) num_threads(nth)
    for (long h = 0; h < H; h++) {
        const float d = dt[h], hd = 0.5f * dt[h];
        const float *cb, *cp, *qb, *qp;
        s4w_sums(k, H, J, h, &cb, &cp, &qb, &qp);
        const float *f = F + 2 * h * J;
        if (Y) {
            float *ycp = Y + 2 * h * J, *yqb = ycp + 2 * H * J, *yqp = ycp + 4 * H * J;
#pragma omp simd
            for (long j = 0; j < J; j++) {
                float ur, ui, vr, vi, ar, ai, br, bi, cr, ci;
                s4w_terms(hd, opz, J, j, cp, qb, qp, &ur, &ui, &vr, &vi);
                const float Fr = f[2 * j], Fi = f[2 * j + 1];
                /* df/dk_cp = -dt (s/D) k_qb, df/dk_qb = -dt (s/D) k_cp, df/dk_qp = dt (s corr)(s/D); Y = F conj(df) */
                CMUL(ur, ui, qb[2 * j], qb[2 * j + 1], ar, ai);
                ar *= -d; ai *= -d;
                ycp[2 * j] = Fr * ar + Fi * ai; ycp[2 * j + 1] = Fi * ar - Fr * ai;
                CMUL(ur, ui, cp[2 * j], cp[2 * j + 1], br, bi);
                br *= -d; bi *= -d;
                yqb[2 * j] = Fr * br + Fi * bi; yqb[2 * j + 1] = Fi * br - Fr * bi;
                CMUL(vr, vi, ur, ui, cr, ci);
                cr *= d; ci *= d;
                yqp[2 * j] = Fr * cr + Fi * ci; yqp[2 * j + 1] = Fi * cr - Fr * ci;
            }
        }
        if (gdt) {
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (long j = 0; j < J; j++) {
                float ur, ui, vr, vi, ar, ai, br, bi;
                s4w_terms(hd, opz, J, j, cp, qb, qp, &ur, &ui, &vr, &vi);
                /* df/dt = k_cb - 2 s corr + (s corr)(s/D) k_qp */
                CMUL(vr, vi, ur, ui, ar, ai);
                CMUL(ar, ai, qp[2 * j], qp[2 * j + 1], br, bi);
                const float er = cb[2 * j] - 2.0f * vr + br, ei = cb[2 * j + 1] - 2.0f * vi + bi;
                const float cj = (j == 0 || 2 * j == L) ? 1.0f : 2.0f;
                acc += cj * (f[2 * j] * er + f[2 * j + 1] * ei); /* c_j Re(conj(F) df/dt) */
            }
            gdt[h] = acc / (float)L;
        }
    }
    free(opz);
    return 0;
}
