"""LTI convolution kernels K_k = C Ā^k B̄ computed from structured parameters."""
from .cauchy import cauchy, cauchy_conj, dplr_kernel, dplr_kernel_ref
from .naive import naive_kernel
from .rational import fold, rational_kernel, rational_kernel_ref
from .state import ssm_final_state, ssm_final_state_ref, ssm_initial_response, ssm_initial_response_ref
from .transfer import companion, poly_from_roots, ss_to_tf, tf_to_ss
from .vandermonde import vandermonde_kernel, vandermonde_kernel_ref, vandermonde_reduce, vandermonde_reduce_ref
