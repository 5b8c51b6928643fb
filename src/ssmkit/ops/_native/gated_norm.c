/* Mamba-2's output side before out_proj: the D skip and the gated group RMSNorm, forward and
 * backward, float32 and float64, plain C99 + OpenMP, raw pointers.
 *
 * Per row r (rows = batch x length), heads h of P channels (E = H P), groups of S channels
 * (S divides E), with s = sigmoid(z), silu(z) = z s:
 *
 *     v = y + D_h x                                         (per head)
 *     u = v silu(z)   (gate first)    or   u = v            (norm_before_gate)
 *     rstd_k = 1 / sqrt(mean_{e in group k} u_e² + eps),    n = u rstd
 *     out = w n       (gate first)    or   out = w n silu(z) (norm_before_gate)
 *
 * Backward, with dn the gradient of n and c_k = mean_{group k}(dn n):
 *     gate first:        dn = dout w,          du = rstd (dn - n c),  dv = du silu(z),
 *                        dsilu = du v,         dw = sum_rows dout n
 *     norm_before_gate:  dn = dout w silu(z),  dv = rstd (dn - n c),
 *                        dsilu = dout w n,     dw = sum_rows dout n silu(z)
 *     dz = dsilu s (1 + z (1 - s)),  dy = dv,  dx = D_h dv,  dD_h = sum_{rows, p} dv x.
 *
 * Layouts: y, x, out, dout, dy, dx, dz: (rows, E) contiguous; z: rows of E contiguous values,
 * row stride zs (a slice of the in-projection's output); D: (H,), w: (E,); rstd: (rows, E/S),
 * the only thing the forward keeps for the backward (v, u, n are recomputed).
 *
 * Determinism: the rows are cut into blocks of GN_ROWS rows (a number that does not depend on
 * the thread count); each block's dw, dD sums go to its own slot of a partial buffer, and the
 * slots are summed in block order. The gradients are bit-identical for any thread count.
 *
 * The file is a template: it includes itself twice, once per scalar type.
 */
#ifndef GN_SCALAR

#include <math.h>
#include <string.h>
#include "native_common.h"

#define GN_ROWS 32 /* rows per block of the backward's partial sums */

long gn_blocks(long rows) { return (rows + GN_ROWS - 1) / GN_ROWS; }

#define GN_SCALAR float
#define GN_SFX f32
#define GN_EXP expf
#define GN_SQRT sqrtf
#include __FILE__
#undef GN_SCALAR
#undef GN_SFX
#undef GN_EXP
#undef GN_SQRT

#define GN_SCALAR double
#define GN_SFX f64
#define GN_EXP exp
#define GN_SQRT sqrt
#include __FILE__
#undef GN_SCALAR
#undef GN_SFX
#undef GN_EXP
#undef GN_SQRT

#else /* template body */

#define GN_CAT2(a, b) a##_##b
#define GN_CAT(a, b) GN_CAT2(a, b)
#define S GN_SCALAR

/* v = y + D_h x for one row; g = silu(z), and (when ds) the derivative of silu, s (1 + z (1 - s)). */
static inline void GN_CAT(gn_row, GN_SFX)(const S *restrict y, const S *restrict x, const S *restrict D,
                                          const S *restrict z, S *restrict v, S *restrict g, S *restrict ds,
                                          long H, long P) {
    for (long h = 0; h < H; h++) {
        const S d = D[h];
        const S *yh = y + h * P, *xh = x + h * P;
        S *vh = v + h * P;
#pragma omp simd
        for (long p = 0; p < P; p++) vh[p] = yh[p] + d * xh[p];
    }
    const long E = H * P;
    if (ds) {
#pragma omp simd
        for (long e = 0; e < E; e++) {
            const S s = (S)1 / ((S)1 + GN_EXP(-SSM_SIG_ARG(z[e], S)));
            g[e] = z[e] * s;
            ds[e] = s * ((S)1 + z[e] * ((S)1 - s));
        }
    } else {
#pragma omp simd
        for (long e = 0; e < E; e++) g[e] = z[e] / ((S)1 + GN_EXP(-SSM_SIG_ARG(z[e], S)));
    }
}

/* work: nthreads x 2E */
void GN_CAT(gn_fwd, GN_SFX)(const S *restrict y, const S *restrict x, const S *restrict D,
                            const S *restrict z, long zs, const S *restrict w, S *restrict out,
                            S *restrict rstd, S *restrict work, long rows, long H, long P, long gs,
                            double eps, int nbg, int nthreads) {
    const long E = H * P, G = E / gs;
#pragma omp parallel num_threads(nthreads)
    {
        const long tid = ssm_thread_id();
        S *v = work + tid * 2 * E, *g = v + E;
        long r;
#pragma omp for schedule(static)
        for (r = 0; r < rows; r++) {
            GN_CAT(gn_row, GN_SFX)(y + r * E, x + r * E, D, z + r * zs, v, g, NULL, H, P);
            if (!nbg) {
#pragma omp simd
                for (long e = 0; e < E; e++) v[e] *= g[e];
            }
            S *o = out + r * E;
            for (long k = 0; k < G; k++) {
                const S *u = v + k * gs;
                S ss = 0;
#pragma omp simd reduction(+ : ss)
                for (long j = 0; j < gs; j++) ss += u[j] * u[j];
                const S rs = (S)1 / GN_SQRT(ss / (S)gs + (S)eps);
                rstd[r * G + k] = rs;
                const S *wk = w + k * gs, *gk = g + k * gs;
                S *ok = o + k * gs;
                if (nbg) {
#pragma omp simd
                    for (long j = 0; j < gs; j++) ok[j] = wk[j] * (u[j] * rs) * gk[j];
                } else {
#pragma omp simd
                    for (long j = 0; j < gs; j++) ok[j] = wk[j] * (u[j] * rs);
                }
            }
        }
    }
}

/* part: gn_blocks(rows) x (E + H); work: nthreads x 4E */
void GN_CAT(gn_bwd, GN_SFX)(const S *restrict y, const S *restrict x, const S *restrict D,
                            const S *restrict z, long zs, const S *restrict w, const S *restrict rstd,
                            const S *restrict dout, S *restrict dy, S *restrict dx, S *restrict dz,
                            S *restrict dD, S *restrict dw, S *restrict part, S *restrict work,
                            long rows, long H, long P, long gs, int nbg, int nthreads) {
    const long E = H * P, G = E / gs, nblk = (rows + GN_ROWS - 1) / GN_ROWS;
#pragma omp parallel num_threads(nthreads)
    {
        const long tid = ssm_thread_id();
        S *v = work + tid * 4 * E, *g = v + E, *ds = g + E, *dv = ds + E;
        long blk;
#pragma omp for schedule(static)
        for (blk = 0; blk < nblk; blk++) {
            S *pw = part + blk * (E + H), *pD = pw + E;
            memset(pw, 0, (E + H) * sizeof(S));
            const long r1 = (blk + 1) * GN_ROWS < rows ? (blk + 1) * GN_ROWS : rows;
            for (long r = blk * GN_ROWS; r < r1; r++) {
                const S *zr = z + r * zs, *dor = dout + r * E;
                GN_CAT(gn_row, GN_SFX)(y + r * E, x + r * E, D, zr, v, g, ds, H, P);
                S *dzr = dz + r * E;
                for (long k = 0; k < G; k++) {
                    const long o = k * gs;
                    const S rs = rstd[r * G + k];
                    const S *vk = v + o, *gk = g + o, *dk = ds + o, *wk = w + o, *dok = dor + o;
                    S *dvk = dv + o, *pwk = pw + o, *dzk = dzr + o;
                    S c = 0;
                    if (!nbg) {
#pragma omp simd reduction(+ : c)
                        for (long j = 0; j < gs; j++) {
                            const S n = vk[j] * gk[j] * rs, dn = dok[j] * wk[j];
                            pwk[j] += dok[j] * n;
                            c += dn * n;
                        }
                        c /= (S)gs;
#pragma omp simd
                        for (long j = 0; j < gs; j++) {
                            const S n = vk[j] * gk[j] * rs;
                            const S du = rs * (dok[j] * wk[j] - n * c);
                            dvk[j] = du * gk[j];
                            dzk[j] = du * vk[j] * dk[j];
                        }
                    } else {
#pragma omp simd reduction(+ : c)
                        for (long j = 0; j < gs; j++) {
                            const S n = vk[j] * rs, dwn = dok[j] * wk[j];
                            pwk[j] += dok[j] * n * gk[j];
                            dzk[j] = dwn * n * dk[j];
                            c += dwn * gk[j] * n;
                        }
                        c /= (S)gs;
#pragma omp simd
                        for (long j = 0; j < gs; j++) {
                            const S n = vk[j] * rs;
                            dvk[j] = rs * (dok[j] * wk[j] * gk[j] - n * c);
                        }
                    }
                }
                S *dyr = dy + r * E, *dxr = dx + r * E;
                const S *xr = x + r * E;
                for (long h = 0; h < H; h++) {
                    const S d = D[h];
                    const S *dvh = dv + h * P, *xh = xr + h * P;
                    S *dyh = dyr + h * P, *dxh = dxr + h * P;
                    S acc = 0;
#pragma omp simd reduction(+ : acc)
                    for (long p = 0; p < P; p++) {
                        dyh[p] = dvh[p];
                        dxh[p] = d * dvh[p];
                        acc += dvh[p] * xh[p];
                    }
                    pD[h] += acc;
                }
            }
        }
        /* (implicit barrier) the block sums, in block order */
        long e;
#pragma omp for schedule(static)
        for (e = 0; e < E + H; e++) {
            S acc = 0;
            for (long b = 0; b < nblk; b++) acc += part[b * (E + H) + e];
            if (e < E) dw[e] = acc;
            else dD[e - E] = acc;
        }
    }
}

#undef S
#undef GN_CAT
#undef GN_CAT2

#endif
