/* Helpers shared by the native kernels (each .c file includes this header). */
#ifndef SSMKIT_NATIVE_COMMON_H
#define SSMKIT_NATIVE_COMMON_H

#include <math.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* the calling thread's number inside an OpenMP parallel region (0 without OpenMP): indexes
 * the per-thread scratch buffers */
static inline long ssm_thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* the number of threads of the enclosing OpenMP parallel region (1 without OpenMP) */
static inline long ssm_num_threads(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* The argument of exp(-x) in a sigmoid 1 / (1 + exp(-x)) or a SiLU x / (1 + exp(-x)), clamped
 * below at -80: the kernels are compiled with -ffast-math, under which 1 / (1 + inf) is NaN, not
 * 0, once exp overflows (x below -88 in float32). sigmoid(-80) = 2e-35 stands for anything
 * smaller. T is the scalar type. */
#define SSM_SIG_ARG(x, T) ((x) < (T)-80 ? (T)-80 : (x))

/* exp for float32, inlined so that loops vectorise without a library call:
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

/* The standard normal distribution function Phi(x) = (1 + erf(x / sqrt 2)) / 2 for float32, and
 * in *e the factor exp(-x^2 / 2) of the density phi(x) = exp(-x^2 / 2) / sqrt(2 pi): the parts of
 * GELU(x) = x Phi(x) and GELU'(x) = Phi(x) + x phi(x), inlined so that loops vectorise (the math
 * library's vector erff took ~35 cycles per 16 values). With z = |x| / sqrt 2 and t = 1 / (1 + z/2)
 * in (0, 1],
 *     erfc(z) = exp(-z^2) t P(t),
 * P the degree-11 polynomial fitted to erfcx(z) / t = exp(z^2) erfc(z) / t (weighted least squares
 * in relative error on 4,000 Chebyshev nodes of [0, 1]; P(0) = 1 / (2 sqrt pi), the limit as
 * z -> inf): relative error below 1.6e-7 (float32 evaluation, against scipy's erfcx in float64).
 * Phi = erfc(z) / 2 for x < 0 and 1 - erfc(z) / 2 otherwise, so the lower tail keeps its relative
 * accuracy (1 + erf cancels there), and exp(-z^2) = exp(-x^2 / 2) is shared with phi: one exp,
 * one division. For |x| beyond 13 (x^2 > 170) exp(-x^2/2) is below 1e-37 and is returned as 0:
 * Phi is 0 or 1 and x phi(x) is 0 for any finite x. */
static inline float ssm_gauss_cdf(float x, float *e) {
    const float x2 = x * x;
    const int far = !(x2 < 170.0f);
    const float ex = far ? 0.0f : ssm_expf(-0.5f * x2);
    const float t = 1.0f / (1.0f + 0.35355339059327376f * (far ? 0.0f : fabsf(x))); /* 1 / (1 + z/2) */
    float p = 6.355432793e-03f;
    p = p * t + 9.655131958e-03f;
    p = p * t - 1.586965770e-01f;
    p = p * t + 3.969020844e-01f;
    p = p * t - 3.790725172e-01f;
    p = p * t + 9.433113784e-02f;
    p = p * t - 4.725576565e-02f;
    p = p * t + 9.115218371e-02f;
    p = p * t + 1.755690426e-01f;
    p = p * t + 2.468710393e-01f;
    p = p * t + 2.820940018e-01f;
    p = p * t + 2.820948064e-01f;
    const float half = 0.5f * ex * t * p; /* erfc(z) / 2 */
    *e = ex;
    return x < 0.0f ? half : 1.0f - half;
}

#endif
