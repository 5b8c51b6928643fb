"""Sequence operators: causal FFT convolution and linear / selective scans."""
from .fftconv import causal_conv_ref, fftconv
