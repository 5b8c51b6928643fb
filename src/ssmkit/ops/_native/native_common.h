/* Helpers shared by the native kernels (each .c file includes this header). */
#ifndef SSMKIT_NATIVE_COMMON_H
#define SSMKIT_NATIVE_COMMON_H

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

#endif
