/* The LTI blocks' channel mixer, forward and backward, over blocks of rows that stay in cache.
 * For rows h (R, H), weight W (2H, H) and bias b (2H,):
 *     g = GELU(h),  z = g W^T + b = [a, s],  y = a * sigmoid(s)                    (forward)
 *     ga = gy * sig(s),  gs = ga * a * (1 - sig(s)),  dz = [ga, gs]
 *     gh = GELU'(h) * (dz W),  gW = dz^T g,  gb = sum_r dz                         (backward)
 * GELU is the exact one, x Phi(x) with Phi(x) = (1 + erf(x / sqrt 2)) / 2, and
 * GELU'(x) = Phi(x) + x exp(-x^2 / 2) / sqrt(2 pi); Phi, exp and the sigmoid are the inlined
 * float32 functions of native_common.h (a few ulp; no library call in the vector loops).
 * torch runs these as a dozen passes over (R, H) or (R, 2H) tensors that leave the cache between
 * passes; here one thread takes MX_RB rows at a time through every step (GELU, the product, the
 * gate; in the backward dz, GELU', both products), so each step reads what the previous one left
 * in L1/L2. The forward saves for the backward g, [a, sig(s)] in place of z (rows padded, see
 * mix_z_stride) and GELU'(h), which it gets almost free beside GELU(h) (the exp is shared), so
 * the backward evaluates no erf, exp or sigmoid.
 * The products use an AVX2 register tile of 4 rows x 16 columns over B packed in panels of
 * 16 columns (a portable loop otherwise). H must be a multiple of 8. float32, contiguous operands.
 * gW and gb are sums over rows: every chunk of rows (its size a function of R only) sums into its
 * own partial, and the partials are added in chunk order, so the results do not depend on the
 * number of threads. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "native_common.h"

#define MX_RB 32      /* rows per cache block */
#define MX_CHUNKS 32  /* at most this many partial sums of gW (the backward's parallelism) */

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

/* C[i, j] (+)= sum_k A[i, k] B[k, j] for MR rows and NV * 8 columns: A[i, k] at A + i * ars + k * aks,
 * B[k, j] at B + k * ldb + j, C[i, j] at C + i * ldc + j; the initial C is C itself (acc), the
 * bias row (bias) or zero. */
static inline __attribute__((always_inline)) void mx_tile(long K, const float *A, long ars, long aks, const float *B,
                                                           long ldb, float *C, long ldc, const float *bias, int acc,
                                                           const int MR, const int NV) {
    __m256 c[4][2];
    for (int i = 0; i < MR; i++)
        for (int v = 0; v < NV; v++)
            c[i][v] = acc ? _mm256_loadu_ps(C + i * ldc + 8 * v)
                          : (bias ? _mm256_loadu_ps(bias + 8 * v) : _mm256_setzero_ps());
    for (long k = 0; k < K; k++) {
        __m256 b[2];
        for (int v = 0; v < NV; v++) {
            b[v] = _mm256_loadu_ps(B + k * ldb + 8 * v);
            __asm__("" : "+x"(b[v])); /* keep b in a register: folded into each FMA it is loaded MR times */
        }
        for (int i = 0; i < MR; i++) {
            const __m256 a = _mm256_broadcast_ss(A + i * ars + k * aks);
            for (int v = 0; v < NV; v++) c[i][v] = _mm256_fmadd_ps(a, b[v], c[i][v]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int v = 0; v < NV; v++) _mm256_storeu_ps(C + i * ldc + 8 * v, c[i][v]);
}

/* C (M x N) (+)= A (M x K) B (K x N), N a multiple of 8; strides as in mx_tile; bias (N,) or NULL.
 * B is either row-major with row stride ldb (packed = 0) or packed by mx_pack (packed = 1).
 * Panels of 16 columns outside, tiles of 4 rows inside: a panel of B (K x 16) stays in L1 while
 * every tile of rows passes over it. */
static void mx_gemm(long M, long N, long K, const float *A, long ars, long aks, const float *B, long ldb, int packed,
                    float *C, long ldc, const float *bias, int acc) {
    for (long j = 0; j < N; j += 16) {
        const float *bj = bias ? bias + j : NULL, *Bp = packed ? B + j * K : B + j;
        const long lb = packed ? (N - j < 16 ? N - j : 16) : ldb;
        long i = 0;
        if (j + 16 <= N) {
            for (; i + 4 <= M; i += 4) mx_tile(K, A + i * ars, ars, aks, Bp, lb, C + i * ldc + j, ldc, bj, acc, 4, 2);
            for (; i < M; i++) mx_tile(K, A + i * ars, ars, aks, Bp, lb, C + i * ldc + j, ldc, bj, acc, 1, 2);
        } else {
            for (; i + 4 <= M; i += 4) mx_tile(K, A + i * ars, ars, aks, Bp, lb, C + i * ldc + j, ldc, bj, acc, 4, 1);
            for (; i < M; i++) mx_tile(K, A + i * ars, ars, aks, Bp, lb, C + i * ldc + j, ldc, bj, acc, 1, 1);
        }
    }
}
#else
static void mx_gemm(long M, long N, long K, const float *A, long ars, long aks, const float *B, long ldb, int packed,
                    float *C, long ldc, const float *bias, int acc) {
    for (long i = 0; i < M; i++) {
        float *c = C + i * ldc;
        if (!acc)
            for (long j = 0; j < N; j++) c[j] = bias ? bias[j] : 0.0f;
        for (long k = 0; k < K; k++) {
            const float a = A[i * ars + k * aks];
            for (long j = 0; j < N; j++) {
                const float b = packed ? B[(j / 16) * 16 * K + k * (N - j / 16 * 16 < 16 ? N - j / 16 * 16 : 16) + j % 16]
                                       : B[k * ldb + j];
                c[j] += a * b;
            }
        }
    }
}
#endif

/* B (K x N), element (k, j) at src[k * rs + j * cs] -> panels of 16 columns (the last one
 * narrower), each K rows of its width contiguous: rows of a panel 64 bytes apart instead of a
 * row of B apart (rows 1-2 kB apart would share a few of L1's sets) */
static void mx_pack(const float *src, long rs, long cs, long K, long N, float *dst) {
    for (long j0 = 0; j0 < N; j0 += 16) {
        const long w = N - j0 < 16 ? N - j0 : 16;
        float *d = dst + j0 * K;
        for (long k = 0; k < K; k++)
            for (long j = 0; j < w; j++) d[k * w + j] = src[k * rs + (j0 + j) * cs];
    }
}

/* rows of x (n, H, row stride xs) -> g = GELU(x) (row stride gs) and, if dg is given, its
 * derivative GELU'(x) = Phi(x) + x phi(x) (n rows of H); Phi and phi by ssm_gauss_cdf, inlined
 * and vectorised */
static void mx_gelu(const float *x, long xs, float *g, long gs, float *dg, long n, long H) {
    for (long r = 0; r < n; r++) {
        const float *xr = x + r * xs;
        float *gr = g + r * gs;
        if (dg) {
            float *dr = dg + r * H;
#pragma omp simd
            for (long j = 0; j < H; j++) {
                float e;
                const float Phi = ssm_gauss_cdf(xr[j], &e);
                gr[j] = xr[j] * Phi;
                dr[j] = Phi + xr[j] * 0.39894228040143268f * e;
            }
        } else {
#pragma omp simd
            for (long j = 0; j < H; j++) {
                float e;
                gr[j] = xr[j] * ssm_gauss_cdf(xr[j], &e);
            }
        }
    }
}

/* rows of z (n, 2H, row stride zs) -> y (n, H) = a * sigmoid(s), plus res (n, H) if given;
 * with keep_sig, sigmoid(s) overwrites s (for the backward) */
static inline __attribute__((always_inline)) void mx_gate_row(float *a, const float *q, float *o, long H,
                                                               const int with_res, const int keep_sig) {
    float *s = a + H;
#pragma omp simd
    for (long j = 0; j < H; j++) {
        const float sig = 1.0f / (1.0f + ssm_expf(-s[j])); /* ssm_expf clamps: no overflow to inf */
        o[j] = with_res ? q[j] + a[j] * sig : a[j] * sig;
        if (keep_sig) s[j] = sig;
    }
}

static void mx_gate(float *z, long zs, const float *res, float *y, long n, long H, int keep_sig) {
    for (long r = 0; r < n; r++) { /* the options fixed per loop: no masked or conditional loads inside */
        float *a = z + r * zs, *o = y + r * H;
        if (res && keep_sig) mx_gate_row(a, res + r * H, o, H, 1, 1);
        else if (res) mx_gate_row(a, res + r * H, o, H, 1, 0);
        else if (keep_sig) mx_gate_row(a, NULL, o, H, 0, 1);
        else mx_gate_row(a, NULL, o, H, 0, 0);
    }
}

/* rows of [a, sig(s)] (n, 2H, row stride zs, as mx_gate leaves them) and gy (n, H) ->
 * dz = [ga, gs] (row stride zs) */
static void mx_gate_grad(const float *z, const float *gy, float *dz, long zs, long n, long H) {
    for (long r = 0; r < n; r++) {
        const float *a = z + r * zs, *sg = a + H, *d = gy + r * H;
        float *da = dz + r * zs, *ds = da + H;
        for (long j = 0; j < H; j++) {
            const float sig = sg[j];
            const float ga = d[j] * sig;
            ds[j] = ga * a[j] * (1.0f - sig);
            da[j] = ga;
        }
    }
}

/* Row strides of the saved g and z: H + 16 and 2H + 16 floats. Rows 1-2 kB apart (H = 256)
 * would map into two to four of L1's 64 sets, and the backward's dz^T g reads down such rows. */
long mix_g_stride(long H) { return H + 16; }
long mix_z_stride(long H) { return 2 * H + 16; }

/* y = res + a * sigmoid(s), [a, s] = GELU(h) W^T + b for h (R, H); res (R, H) may be NULL (no
 * residual: y = a * sigmoid(s)). When z and g are given (R rows of mix_z_stride(H) and
 * mix_g_stride(H) floats) they receive [a, sigmoid(s)] and GELU(h) for the backward, and dg
 * (R, H), if given, GELU'(h) (needed for the gradient of h only). */
int mix_fwd_f32(const float *h, const float *W, const float *b, const float *res, float *y, float *z, float *g,
                float *dg, long R, long H, int nthreads) {
    const int nth = nthreads > 0 ? nthreads : 1;
    const long nblk = (R + MX_RB - 1) / MX_RB, zs = mix_z_stride(H), gs = mix_g_stride(H);
    float *Wt = (float *)malloc((size_t)(2 * H * H) * sizeof(float));
    float *scr = (float *)malloc((size_t)(nth * MX_RB * (zs + gs)) * sizeof(float));
    if (!Wt || !scr) { free(Wt); free(scr); return 1; }
    mx_pack(W, 1, H, H, 2 * H, Wt); /* W^T (H x 2H) */
#pragma omp parallel for schedule(static) num_threads(nth)
    for (long blk = 0; blk < nblk; blk++) {
        const long r0 = blk * MX_RB, n = R - r0 < MX_RB ? R - r0 : MX_RB;
        float *gb = g ? g + r0 * gs : scr + ssm_thread_id() * MX_RB * (zs + gs);
        float *zb = z ? z + r0 * zs : scr + ssm_thread_id() * MX_RB * (zs + gs) + MX_RB * gs;
        mx_gelu(h + r0 * H, H, gb, gs, dg ? dg + r0 * H : NULL, n, H);
        mx_gemm(n, 2 * H, H, gb, gs, 1, Wt, 0, 1, zb, zs, b, 0);
        mx_gate(zb, zs, res ? res + r0 * H : NULL, y + r0 * H, n, H, z != NULL);
    }
    free(Wt);
    free(scr);
    return 0;
}

/* rows per chunk of the backward's partial sums: a function of R only */
static long mx_chunk_rows(long R) {
    const long per = (R + MX_CHUNKS - 1) / MX_CHUNKS;
    return ((per + MX_RB - 1) / MX_RB) * MX_RB;
}

/* From the forward's saved z ([a, sigmoid(s)]), g and dg (GELU'(h); may be NULL when gh is):
 * gh (R, H), gW (2H, H), gb (2H,), each may be NULL (not wanted).
 * dzo, if given (R rows of mix_z_stride(H) floats), receives dz, for the caller to form gW and gb
 * itself (pass gW = gb = NULL then): at H = 256 a (2H, H) partial per block of rows no longer
 * stays in L2, and a library product over all rows does better. */
int mix_bwd_f32(const float *gy, const float *dg, const float *z, const float *g, const float *W, float *gh, float *gW,
                float *gb, float *dzo, long R, long H, int nthreads) {
    const int nth = nthreads > 0 ? nthreads : 1;
    const long CH = R > 0 ? mx_chunk_rows(R) : MX_RB, nch = (R + CH - 1) / CH;
    const long zs = mix_z_stride(H), gs = mix_g_stride(H), per_thread = MX_RB * (zs + H);
    const int want_w = gW != NULL || gb != NULL;
    if (gh && !dg) return 2; /* gh needs the forward's GELU'(h) */
    const long pw = 2 * H * H + 2 * H; /* one partial: gW then gb */
    float *Wp = (float *)malloc((size_t)(2 * H * H) * sizeof(float));
    float *scr = (float *)malloc((size_t)(nth * per_thread) * sizeof(float));
    float *part = want_w ? (float *)malloc((size_t)((nch > 0 ? nch : 1) * pw) * sizeof(float)) : NULL;
    if (!Wp || !scr || (want_w && !part)) { free(Wp); free(scr); free(part); return 1; }
    mx_pack(W, H, 1, 2 * H, H, Wp); /* W (2H x H) */
#pragma omp parallel for schedule(static) num_threads(nth)
    for (long c = 0; c < nch; c++) {
        float *dz = scr + ssm_thread_id() * per_thread, *gg = dz + MX_RB * zs;
        float *pW = want_w ? part + c * pw : NULL, *pb = want_w ? pW + 2 * H * H : NULL;
        if (want_w) memset(pW, 0, (size_t)pw * sizeof(float));
        const long cend = (c + 1) * CH < R ? (c + 1) * CH : R;
        for (long r0 = c * CH; r0 < cend; r0 += MX_RB) {
            const long n = cend - r0 < MX_RB ? cend - r0 : MX_RB;
            float *dzb = dzo ? dzo + r0 * zs : dz;
            mx_gate_grad(z + r0 * zs, gy + r0 * H, dzb, zs, n, H);
            if (gh) {
                mx_gemm(n, H, 2 * H, dzb, zs, 1, Wp, 0, 1, gg, H, NULL, 0);
                float *o = gh + r0 * H;
                const float *d = dg + r0 * H;
                for (long i = 0; i < n * H; i++) o[i] = gg[i] * d[i];
            }
            if (want_w) {
                mx_gemm(2 * H, H, n, dzb, 1, zs, g + r0 * gs, gs, 0, pW, H, NULL, 1); /* pW += dz^T g */
                for (long r = 0; r < n; r++)
                    for (long j = 0; j < 2 * H; j++) pb[j] += dzb[r * zs + j];
            }
        }
    }
    if (gW) {
#pragma omp parallel for schedule(static) num_threads(nth)
        for (long e = 0; e < 2 * H * H; e++) {
            float s = 0.0f;
            for (long c = 0; c < nch; c++) s += part[c * pw + e];
            gW[e] = s;
        }
    }
    if (gb) {
        for (long j = 0; j < 2 * H; j++) {
            float s = 0.0f;
            for (long c = 0; c < nch; c++) s += part[c * pw + 2 * H * H + j];
            gb[j] = s;
        }
    }
    free(Wp);
    free(scr);
    free(part);
    return 0;
}
