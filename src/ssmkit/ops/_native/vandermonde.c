/* The diagonal SSM kernel as a Vandermonde product, forward and backward, in double precision:
 *     K[r, l] = 2 Re sum_m CB[r, m] E[r, m, l],   E[r, m, l] = exp(l w[r, m]),   l < L
 * for rows r < R of M modes (w = log of the discrete eigenvalue; the kernels take z = e^w, computed once by
 * the caller for both directions). With gK = dLoss/dK (real), in
 * torch's convention for complex gradients (conj of the derivative for a real loss):
 *     S0[r, m] = sum_l gK[r, l] E[r, m, l],   S1[r, m] = sum_l l gK[r, l] E[r, m, l]
 *     gCB = 2 conj(S0),   gw = 2 conj(CB S1)
 * The forward's powers come from the recurrence E_{l+1} = E_l e^w (one complex product per term, the
 * modes of a row vectorised), so the relative error of E_l grows about like l ulp of double: ~1e-13
 * at L = 4096, far below the float32 the layers use. Blocks of VDM_W modes keep their powers and
 * sums in registers across all lags. The backward splits the lags into tiles of T,
 * l = b T + t, E_l = e^{b T w} e^{t w}: a tile's sums against one table of e^{t w} need no complex
 * product per term (four multiply-adds per mode and lag, vectorised over the lags), and are added
 * to the totals times the tile's anchor e^{b T w}. Rows that share their modes (S4's four sums of
 * a channel) share the table and the anchors. Complex numbers are (re, im) pairs,
 * row-major (R, M). Threads split the rows; each row's sums have one fixed order, so the
 * results do not depend on the number of threads. */
#include <stdlib.h>

#include "native_common.h"

#define VDM_W 8 /* modes per block (two AVX registers): their powers and sums stay in registers across the lags */
#define VDM_T 128 /* lags per tile of the backward (at most): one table of e^{t w}, t < T, serves every tile */
#define VDM_G 3  /* modes per group of the backward: 3 modes x 4 sums = 12 accumulators, four lags each */

/* z = e^w for modes m0 .. m0 + VDM_W of a row (zero past the row's M modes) */
static void vdm_step(const double *z, long m0, long M, double *ar, double *ai) {
    for (int q = 0; q < VDM_W; q++) {
        if (m0 + q < M) {
            ar[q] = z[2 * (m0 + q)];
            ai[q] = z[2 * (m0 + q) + 1];
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

/* u (G x 4 sums x 4 lanes): the tile's sums U0 = sum_t g_t P_t, U1 = sum_t lg_t P_t (re, im) for the group's
 * modes k < G, over its T lags (a multiple of 8) against the table P_t = e^{t w_k} = (tr, ti)[k * VDM_T + t];
 * lane i sums the lags t = i mod 4 */
static inline __attribute__((always_inline)) void vdm_tile_g(const double *tr, const double *ti, const double *g,
                                                             const double *lg, long T, const int G, double *u) {
    __m256d a[VDM_G][4];
    for (int k = 0; k < G; k++) a[k][0] = a[k][1] = a[k][2] = a[k][3] = _mm256_setzero_pd();
    for (long t = 0; t < T; t += 4) {
        const __m256d gv = _mm256_loadu_pd(g + t), lv = _mm256_loadu_pd(lg + t);
        for (int k = 0; k < G; k++) {
            __m256d pr = _mm256_loadu_pd(tr + k * VDM_T + t), pi = _mm256_loadu_pd(ti + k * VDM_T + t);
#if defined(__GNUC__)
            __asm__("" : "+x"(pr), "+x"(pi)); /* one load each (else the compiler folds each into both its products) */
#endif
            a[k][0] = _mm256_fmadd_pd(gv, pr, a[k][0]);
            a[k][1] = _mm256_fmadd_pd(gv, pi, a[k][1]);
            a[k][2] = _mm256_fmadd_pd(lv, pr, a[k][2]);
            a[k][3] = _mm256_fmadd_pd(lv, pi, a[k][3]);
        }
    }
    for (int k = 0; k < G; k++)
        for (int j = 0; j < 4; j++) _mm256_storeu_pd(u + 16 * k + 4 * j, a[k][j]);
}

/* the table rows P_{t+8} = P_t P_8 from P_0..P_7 (T a multiple of 8), four lags per register, the G modes'
 * eight chains each interleaved */
static void vdm_table_chains(double *tr, double *ti, const double *a8r, const double *a8i, int G, long T) {
    __m256d Pr[2 * VDM_G], Pi[2 * VDM_G], Ar[VDM_G], Ai[VDM_G];
    for (int k = 0; k < G; k++) {
        for (int v = 0; v < 2; v++) {
            Pr[2 * k + v] = _mm256_loadu_pd(tr + k * VDM_T + 4 * v); Pi[2 * k + v] = _mm256_loadu_pd(ti + k * VDM_T + 4 * v);
        }
        Ar[k] = _mm256_set1_pd(a8r[k]); Ai[k] = _mm256_set1_pd(a8i[k]);
    }
    for (long t = 8; t < T; t += 8)
        for (int k = 0; k < G; k++)
            for (int v = 0; v < 2; v++) {
                const int c = 2 * k + v;
                const __m256d r = _mm256_fmsub_pd(Pr[c], Ar[k], _mm256_mul_pd(Pi[c], Ai[k]));
                Pi[c] = _mm256_fmadd_pd(Pr[c], Ai[k], _mm256_mul_pd(Pi[c], Ar[k]));
                Pr[c] = r;
                _mm256_storeu_pd(tr + k * VDM_T + t + 4 * v, Pr[c]); _mm256_storeu_pd(ti + k * VDM_T + t + 4 * v, Pi[c]);
            }
}

static void vdm_tile(const double *tr, const double *ti, const double *g, const double *lg, long T, int G, double *u) {
    if (G == 3) vdm_tile_g(tr, ti, g, lg, T, 3, u);
    else if (G == 2) vdm_tile_g(tr, ti, g, lg, T, 2, u);
    else vdm_tile_g(tr, ti, g, lg, T, 1, u);
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

static void vdm_tile(const double *tr, const double *ti, const double *g, const double *lg, long T, int G, double *u) {
    for (int i = 0; i < 16 * G; i++) u[i] = 0.0;
    for (long t = 0; t < T; t++)
        for (int k = 0; k < G; k++) {
            double *uk = u + 16 * k + (t & 3);
            uk[0] += g[t] * tr[k * VDM_T + t];
            uk[4] += g[t] * ti[k * VDM_T + t];
            uk[8] += lg[t] * tr[k * VDM_T + t];
            uk[12] += lg[t] * ti[k * VDM_T + t];
        }
}
static void vdm_table_chains(double *tr, double *ti, const double *a8r, const double *a8i, int G, long T) {
    for (long t = 8; t < T; t += 8)
        for (int k = 0; k < G; k++) {
            double *r = tr + k * VDM_T + t, *i = ti + k * VDM_T + t;
            for (int j = 0; j < 8; j++) {
                r[j] = r[j - 8] * a8r[k] - i[j - 8] * a8i[k];
                i[j] = r[j - 8] * a8i[k] + i[j - 8] * a8r[k];
            }
        }
}
#endif

/* The table e^{t w_k} (t < T: P_1..P_8 by products, then eight chains P_{t+8} = P_t P_8, <= T/8 + 8 ulp) and the
 * anchors anc[b] = e^{b T w_k} (b < nb: A_{b+1} = A_b e^{T w}, e^{T w} = P_{T-1} P_1, <= nb (T/8 + 9) ulp) of the
 * group's G modes z + 2 m0 */
static void vdm_table(const double *z, long m0, int G, long T, long nb, double *tr, double *ti, double *anc) {
    double ar[VDM_G], ai[VDM_G], a8r[VDM_G], a8i[VDM_G];
    for (int k = 0; k < G; k++) {
        /* P_0 .. P_8 as products of depth three (P_8 is the chains' factor), in registers */
        double pr[9], pi[9];
        pr[0] = 1.0; pi[0] = 0.0;
        pr[1] = ar[k] = z[2 * (m0 + k)];
        pi[1] = ai[k] = z[2 * (m0 + k) + 1];
        static const int lhs[9] = {0, 0, 1, 2, 2, 4, 4, 4, 4}, rhs[9] = {0, 0, 1, 1, 2, 1, 2, 3, 4};
        for (int t = 2; t < 9; t++) {
            pr[t] = pr[lhs[t]] * pr[rhs[t]] - pi[lhs[t]] * pi[rhs[t]];
            pi[t] = pr[lhs[t]] * pi[rhs[t]] + pi[lhs[t]] * pr[rhs[t]];
        }
        for (int t = 0; t < 8; t++) { tr[k * VDM_T + t] = pr[t]; ti[k * VDM_T + t] = pi[t]; }
        a8r[k] = pr[8]; a8i[k] = pi[8];
    }
    vdm_table_chains(tr, ti, a8r, a8i, G, T);
    for (int k = 0; k < G && nb > 0; k++) { /* (L = 0: no tiles, no anchors) */
        const double *r = tr + k * VDM_T, *i = ti + k * VDM_T;
        const double br = r[T - 1] * ar[k] - i[T - 1] * ai[k], bi = r[T - 1] * ai[k] + i[T - 1] * ar[k];
        double cr = 1.0, ci = 0.0;
        for (long b = 0; b < nb; b++) {
            anc[2 * (b * VDM_G + k)] = cr; anc[2 * (b * VDM_G + k) + 1] = ci;
            const double t = cr * br - ci * bi;
            ci = cr * bi + ci * br;
            cr = t;
        }
    }
}

/* s (G x 4): (S0 re, S0 im, S1 re, S1 im) of the group's modes for one row (g, lg padded with zeros to nb T),
 * S = sum_b A_b U_b over its tiles */
static void vdm_bwd_group(const double *tr, const double *ti, const double *anc, const double *g, const double *lg,
                          long T, long nb, int G, double *s) {
    double u[16 * VDM_G], acc[16 * VDM_G];
    for (int i = 0; i < 16 * G; i++) acc[i] = 0.0;
    for (long b = 0; b < nb; b++) {
        vdm_tile(tr, ti, g + b * T, lg + b * T, T, G, u);
        for (int k = 0; k < G; k++) {
            const double cr = anc[2 * (b * VDM_G + k)], ci = anc[2 * (b * VDM_G + k) + 1];
            double *a = acc + 16 * k;
            const double *v = u + 16 * k;
            for (int i = 0; i < 4; i++) {
                a[i] += cr * v[i] - ci * v[4 + i];
                a[4 + i] += cr * v[4 + i] + ci * v[i];
                a[8 + i] += cr * v[8 + i] - ci * v[12 + i];
                a[12 + i] += cr * v[12 + i] + ci * v[8 + i];
            }
        }
    }
    for (int k = 0; k < G; k++)
        for (int j = 0; j < 4; j++) {
            const double *a = acc + 16 * k + 4 * j;
            s[4 * k + j] = (a[0] + a[1]) + (a[2] + a[3]);
        }
}

/* K (R, L) is float64, or float32 (out_single: each row summed in double in the thread's buffer, then rounded) */
int vdm_fwd_f64(const double *z, const double *cb, void *K, int out_single, long R, long M, long L, int nthreads) {
    const int nth = nthreads > 0 ? nthreads : 1;
    double *rows = out_single ? (double *)malloc((size_t)(nth * (L > 0 ? L : 1)) * sizeof(double)) : NULL;
    if (out_single && !rows) return 1;
#pragma omp parallel for schedule(static) num_threads(nth)
    for (long r = 0; r < R; r++) {
        const double *zr = z + 2 * r * M, *c = cb + 2 * r * M;
        double *k = out_single ? rows + ssm_thread_id() * L : (double *)K + r * L;
        for (long l = 0; l < L; l++) k[l] = 0.0;
        for (long m0 = 0; m0 < M; m0 += VDM_W) {
            double ar[VDM_W], ai[VDM_W], pr[VDM_W], pi[VDM_W];
            vdm_step(zr, m0, M, ar, ai);
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

/* Rows x H + h (x < X) share the modes z[h] = e^{w[h]} (H, M); gK[x] (H, L) is their gradient, float32 (gk_single) or
 * float64; gw, gcb (X H, M) complex, either may be NULL (not wanted) */
int vdm_bwd_f64(const double *z, const double *cb, const void *const *gK, int gk_single, double *gw, double *gcb,
                long X, long H, long M, long L, int nthreads) {
    const int nth = nthreads > 0 ? nthreads : 1;
    /* nb tiles of T lags (a multiple of 8, at most VDM_T), as few and as even as they can be: little padding */
    const long nb = (L + VDM_T - 1) / VDM_T, T = nb > 0 ? ((L + nb - 1) / nb + 7) / 8 * 8 : 0, Lp = nb * T;
    /* per thread: the X rows g and l g as double, padded with zeros to Lp; the group's table and anchors */
    const long stride = 2 * X * Lp + 2 * VDM_G * VDM_T + 2 * VDM_G * nb;
    double *buf = (double *)malloc((size_t)(nth * (stride > 0 ? stride : 1)) * sizeof(double));
    if (!buf) return 1;
#pragma omp parallel for schedule(static) num_threads(nth)
    for (long h = 0; h < H; h++) {
        double *gx = buf + ssm_thread_id() * stride, *tr = gx + 2 * X * Lp, *ti = tr + VDM_G * VDM_T,
               *anc = ti + VDM_G * VDM_T;
        for (long x = 0; x < X; x++) {
            double *g = gx + 2 * x * Lp, *lg = g + Lp, li = 0.0;
            if (gk_single) {
                const float *src = (const float *)gK[x] + h * L;
                for (long l = 0; l < L; l++) g[l] = (double)src[l];
            } else {
                const double *src = (const double *)gK[x] + h * L;
                for (long l = 0; l < L; l++) g[l] = src[l];
            }
            for (long l = L; l < Lp; l++) g[l] = 0.0;
            for (long l = 0; l < Lp; l++, li += 1.0) lg[l] = li * g[l];
        }
        for (long m0 = 0; m0 < M; m0 += VDM_G) {
            const int G = M - m0 < VDM_G ? (int)(M - m0) : VDM_G;
            vdm_table(z + 2 * h * M, m0, G, T, nb, tr, ti, anc);
            for (long x = 0; x < X; x++) {
                double s[4 * VDM_G];
                vdm_bwd_group(tr, ti, anc, gx + 2 * x * Lp, gx + 2 * x * Lp + Lp, T, nb, G, s);
                for (int k = 0; k < G; k++) {
                    const long i = 2 * ((x * H + h) * M + m0 + k);
                    const double s1r = s[4 * k + 2], s1i = s[4 * k + 3];
                    if (gcb) { gcb[i] = 2.0 * s[4 * k]; gcb[i + 1] = -2.0 * s[4 * k + 1]; }
                    if (gw) { /* 2 conj(CB S1) */
                        gw[i] = 2.0 * (cb[i] * s1r - cb[i + 1] * s1i);
                        gw[i + 1] = -2.0 * (cb[i] * s1i + cb[i + 1] * s1r);
                    }
                }
            }
        }
    }
    free(buf);
    return 0;
}
