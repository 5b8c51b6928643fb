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

#endif
