"""Half-precision (bfloat16, float16) products on the CPU, computed in float32.

CPUs without bfloat16 arithmetic run torch's half-precision kernels far below their float32
rate: a bfloat16 matrix product at about 1/40 of the float32 one on the machine the benchmarks
ran on, and the depthwise convolution of the Mamba layers one small convolution per channel
(26 ms against 0.2 ms for 19 positions at 1,536 channels). These functions widen the operands
to float32, compute there and round the result back to the input's dtype once: the same
numbers as a half-precision kernel that accumulates in float32, at the float32 speed. Other
devices and dtypes go straight to torch. The operands' shapes are checked (the argument is
named); their values are not (the layers that call these check their inputs).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_tensor
from .padded_linear import padded_linear, padding_pays

__all__ = ["depthwise_conv1d", "linear", "module_linear"]

HALF = (torch.bfloat16, torch.float16)


def _widen(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in HALF


def depthwise_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.conv1d(x, weight, bias, groups=C)`` for x (B, C, L), valid positions only."""
    check_tensor("x", x, ndim=3, floating=True, finite=False)
    C = x.shape[1]
    check_tensor("weight", weight, shape=(C, 1, None), floating=True, finite=False)
    if weight.shape[-1] > x.shape[-1]:
        raise ValueError(f"x must have length >= the conv width {weight.shape[-1]}, got shape {tuple(x.shape)}")
    if bias is not None:
        check_tensor("bias", bias, shape=(C,), floating=True, finite=False)
    if _widen(x):
        b = None if bias is None else bias.float()
        return F.conv1d(x.float(), weight.float(), b, groups=C).to(x.dtype)
    return F.conv1d(x, weight, bias, groups=C)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; half precision on the CPU with more than 8 rows in float32
    (a few rows, as in decoding, read the weight once anyway: ``rows_linear`` handles those)."""
    check_tensor("x", x, floating=True, finite=False)
    check_tensor("weight", weight, shape=(None, x.shape[-1] if x.dim() else 0), floating=True, finite=False)
    if bias is not None:
        check_tensor("bias", bias, shape=(weight.shape[0],), floating=True, finite=False)
    if _widen(x) and weight.dtype == x.dtype and x.numel() > 8 * x.shape[-1]:
        b = None if bias is None else bias.float()
        return F.linear(x.float(), weight.float(), b).to(x.dtype)
    return F.linear(x, weight, bias)


def module_linear(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``m(x)``; for a plain ``nn.Linear`` without hooks, in half precision on the CPU, the product
    of :func:`linear`, and in float32 on the CPU with an output width that MKL runs slowly (see
    :func:`~ssmkit.ops.padded_linear.padding_pays`), :func:`~ssmkit.ops.padded_linear.padded_linear`
    (its result's rows are padded); the module
    itself otherwise, e.g. replaced or hooked by the user."""
    if type(m) is not nn.Linear or m._forward_hooks or m._forward_pre_hooks:
        return m(x)
    if _widen(x) and m.weight.dtype == x.dtype and x.numel() > 8 * x.shape[-1]:
        return linear(x, m.weight, m.bias)
    if padding_pays(x, m.weight):
        return padded_linear(x, m.weight, m.bias)
    return m(x)
