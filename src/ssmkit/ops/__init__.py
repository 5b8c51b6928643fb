"""Sequence operators: causal FFT convolution and linear / selective scans."""
