"""Sequence operators: causal FFT convolution and linear / selective scans."""
from .fftconv import causal_conv_ref, fftconv
from .selective_scan import selective_scan, selective_scan_fn, selective_scan_ref
from .ssd import ssd, ssd_ref
from .scan import linear_scan, linear_scan_ref
