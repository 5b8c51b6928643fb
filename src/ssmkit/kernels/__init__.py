"""LTI convolution kernels K_k = C Ā^k B̄ computed from structured parameters."""
