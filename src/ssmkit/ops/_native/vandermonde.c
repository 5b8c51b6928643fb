/* The diagonal SSM kernel as a Vandermonde product, forward and backward, in double precision:
 *     K[r, l] = 2 Re sum_m CB[r, m] E[r, m, l],   E[r, m, l] = exp(l w[r, m]),   l < L
 * for rows r < R of M modes (w = log of the discrete eigenvalue). With gK = dLoss/dK (real), in
 * torch's convention for complex gradients (conj of the derivative for a real loss):
 *     S0[r, m] = sum_l gK[r, l] E[r, m, l],   S1[r, m] = sum_l l gK[r, l] E[r, m, l]
 *     gCB = 2 conj(S0),   gw = 2 conj(CB S1)
 * The powers come from the recurrence E_{l+1} = E_l e^w (one complex product per term, the modes
 * of a row vectorised), so the relative error of E_l grows about like l ulp of double: ~1e-13
 * at L = 4096, far below the float32 the layers use. Blocks of VDM_W modes keep their powers and
 * sums in registers across all lags. Complex numbers are (re, im) pairs,
 * row-major (R, M). Threads split the rows; each row's sums have one fixed order, so the
 * results do not depend on the number of threads. */
#include <math.h>
#include <stdlib.h>

#include "native_common.h"

#define VDM_W 8 /* modes per block (two AVX registers): their powers and sums stay in registers across the lags */

/* e^w for modes m0 .. m0 + VDM_W of a row (zero past the row's M modes) */
static void vdm_step(const double *w, long m0, long M, double *ar, double *ai) {
    for (int q = 0; q < VDM_W; q++) {
        if (m0 + q < M) {
            const double mag = exp(w[2 * (m0 + q)]);
            ar[q] = mag * cos(w[2 * (m0 + q) + 1]);
            ai[q] = mag * sin(w[2 * (m0 + q) + 1]);
        } else {
            ar[q] = ai[q] = 0.0;
        }
    }
}

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

/* k[l] += 2 Re sum_q p_q e^{l w_q} for the VDM_W modes of a block (p starts at CB) */
static void vdm_fwd_block(const double *ar, const double *ai, const double *pr, const double *pi, double *k, long L) {
    __m256d Ar[2], Ai[2], Pr[2], Pi[2];
    for (int v = 0; v < 2; v++) {
        Ar[v] = _mm256_loadu_pd(ar + 4 * v); Ai[v] = _mm256_loadu_pd(ai + 4 * v);
        Pr[v] = _mm256_loadu_pd(pr + 4 * v); Pi[v] = _mm256_loadu_pd(pi + 4 * v);
    }
    for (long l = 0; l < L; l++) {
        const __m256d s = _mm256_add_pd(Pr[0], Pr[1]);
        const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
        k[l] += 2.0 * _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
        for (int v = 0; v < 2; v++) {
            const __m256d t = _mm256_fmsub_pd(Pr[v], Ar[v], _mm256_mul_pd(Pi[v], Ai[v]));
            Pi[v] = _mm256_fmadd_pd(Pr[v], Ai[v], _mm256_mul_pd(Pi[v], Ar[v]));
            Pr[v] = t;
        }
    }
}

/* S0 = sum_l g_l e^{l w}, S1 = sum_l l g_l e^{l w} for the VDM_W modes of a block */
static void vdm_bwd_block(const double *ar, const double *ai, const double *g, long L, double *s0r, double *s0i,
                          double *s1r, double *s1i) {
    __m256d Ar[2], Ai[2], Er[2], Ei[2], S0r[2], S0i[2], S1r[2], S1i[2];
    for (int v = 0; v < 2; v++) {
        Ar[v] = _mm256_loadu_pd(ar + 4 * v); Ai[v] = _mm256_loadu_pd(ai + 4 * v);
        Er[v] = _mm256_set1_pd(1.0); Ei[v] = _mm256_setzero_pd();
        S0r[v] = S0i[v] = S1r[v] = S1i[v] = _mm256_setzero_pd();
    }
    for (long l = 0; l < L; l++) {
        const __m256d g0 = _mm256_set1_pd(g[l]), g1 = _mm256_set1_pd(g[l] * (double)l);
        for (int v = 0; v < 2; v++) {
            S0r[v] = _mm256_fmadd_pd(g0, Er[v], S0r[v]);
            S0i[v] = _mm256_fmadd_pd(g0, Ei[v], S0i[v]);
            S1r[v] = _mm256_fmadd_pd(g1, Er[v], S1r[v]);
            S1i[v] = _mm256_fmadd_pd(g1, Ei[v], S1i[v]);
            const __m256d t = _mm256_fmsub_pd(Er[v], Ar[v], _mm256_mul_pd(Ei[v], Ai[v]));
            Ei[v] = _mm256_fmadd_pd(Er[v], Ai[v], _mm256_mul_pd(Ei[v], Ar[v]));
            Er[v] = t;
        }
    }
    for (int v = 0; v < 2; v++) {
        _mm256_storeu_pd(s0r + 4 * v, S0r[v]); _mm256_storeu_pd(s0i + 4 * v, S0i[v]);
        _mm256_storeu_pd(s1r + 4 * v, S1r[v]); _mm256_storeu_pd(s1i + 4 * v, S1i[v]);
    }
}
#else
static void vdm_fwd_block(const double *ar, const double *ai, const double *pr0, const double *pi0, double *k, long L) {
    double pr[VDM_W], pi[VDM_W];
    for (int q = 0; q < VDM_W; q++) { pr[q] = pr0[q]; pi[q] = pi0[q]; }
    for (long l = 0; l < L; l++) {
        double s = 0.0;
        for (int q = 0; q < VDM_W; q++) {
            s += pr[q];
            const double t = pr[q] * ar[q] - pi[q] * ai[q];
            pi[q] = pr[q] * ai[q] + pi[q] * ar[q];
            pr[q] = t;
        }
        k[l] += 2.0 * s;
    }
}

static void vdm_bwd_block(const double *ar, const double *ai, const double *g, long L, double *s0r, double *s0i,
                          double *s1r, double *s1i) {
    double er[VDM_W], ei[VDM_W];
    for (int q = 0; q < VDM_W; q++) { er[q] = 1.0; ei[q] = 0.0; s0r[q] = s0i[q] = s1r[q] = s1i[q] = 0.0; }
    for (long l = 0; l < L; l++) {
        const double g0 = g[l], g1 = g[l] * (double)l;
        for (int q = 0; q < VDM_W; q++) {
            s0r[q] += g0 * er[q];
            s0i[q] += g0 * ei[q];
            s1r[q] += g1 * er[q];
            s1i[q] += g1 * ei[q];
            const double t = er[q] * ar[q] - ei[q] * ai[q];
            ei[q] = er[q] * ai[q] + ei[q] * ar[q];
            er[q] = t;
        }
    }
}
#endif

/* K (R, L) is float64, or float32 (out_single: each row summed in double in the thread's buffer, then rounded) */
int vdm_fwd_f64(const double *w, const double *cb, void *K, int out_single, long R, long M, long L, int nthreads) {
    const int nth = nthreads > 0 ? nthreads : 1;
    double *rows = out_single ? (double *)malloc((size_t)(nth * (L > 0 ? L : 1)) * sizeof(double)) : NULL;
    if (out_single && !rows) return 1;
#pragma omp parallel for schedule(static) num_threads(nth)
    for (long r = 0; r < R; r++) {
        const double *wr = w + 2 * r * M, *c = cb + 2 * r * M;
        double *k = out_single ? rows + ssm_thread_id() * L : (double *)K + r * L;
        for (long l = 0; l < L; l++) k[l] = 0.0;
        for (long m0 = 0; m0 < M; m0 += VDM_W) {
            double ar[VDM_W], ai[VDM_W], pr[VDM_W], pi[VDM_W];
            vdm_step(wr, m0, M, ar, ai);
            for (int q = 0; q < VDM_W; q++) {
                pr[q] = m0 + q < M ? c[2 * (m0 + q)] : 0.0;
                pi[q] = m0 + q < M ? c[2 * (m0 + q) + 1] : 0.0;
            }
            vdm_fwd_block(ar, ai, pr, pi, k, L);
        }
        if (out_single) {
            float *kf = (float *)K + r * L;
            for (long l = 0; l < L; l++) kf[l] = (float)k[l];
        }
    }
    free(rows);
    return 0;
}

/* gw, gcb (R, M) complex; either may be NULL (not wanted) */
int vdm_bwd_f64(const double *w, const double *cb, const void *gK, int gk_single, double *gw, double *gcb, long R,
                long M, long L, int nthreads) {
    const int nth = nthreads > 0 ? nthreads : 1;
    /* gK is float32 (gk_single) or float64; a float32 row is widened into the thread's buffer */
    double *rows = gk_single ? (double *)malloc((size_t)(nth * (L > 0 ? L : 1)) * sizeof(double)) : NULL;
    if (gk_single && !rows) return 1;
#pragma omp parallel for schedule(static) num_threads(nth)
    for (long r = 0; r < R; r++) {
        const double *wr = w + 2 * r * M, *g = (const double *)gK + r * L;
        if (gk_single) {
            double *buf = rows + ssm_thread_id() * L;
            const float *gf = (const float *)gK + r * L;
            for (long l = 0; l < L; l++) buf[l] = (double)gf[l];
            g = buf;
        }
        for (long m0 = 0; m0 < M; m0 += VDM_W) {
            double ar[VDM_W], ai[VDM_W], s0r[VDM_W], s0i[VDM_W], s1r[VDM_W], s1i[VDM_W];
            vdm_step(wr, m0, M, ar, ai);
            vdm_bwd_block(ar, ai, g, L, s0r, s0i, s1r, s1i);
            for (int q = 0; q < VDM_W && m0 + q < M; q++) {
                const long i = 2 * (r * M + m0 + q);
                if (gcb) { gcb[i] = 2.0 * s0r[q]; gcb[i + 1] = -2.0 * s0i[q]; }
                if (gw) { /* 2 conj(CB S1) */
                    gw[i] = 2.0 * (cb[i] * s1r[q] - cb[i + 1] * s1i[q]);
                    gw[i + 1] = -2.0 * (cb[i] * s1i[q] + cb[i + 1] * s1r[q]);
                }
            }
        }
    }
    free(rows);
    return 0;
}
