"""One contiguous, huge-page block for a model's parameters (CPU decoding reads them all per token)."""
from __future__ import annotations

import torch
from torch import nn

from .. import runtime

__all__ = ["pack_parameters"]

_ALIGN = 64  # bytes: a cache line, and a multiple of every element size


def pack_parameters(module: nn.Module, copy_values: bool = True) -> int:
    """Place every parameter of a CPU module in one contiguous block of memory, in the order
    ``module.parameters()`` lists them (the order a decoding step reads them: layer by layer,
    then the head), each starting on a 64-byte boundary; on Linux the block is a fresh mapping
    advised for transparent huge pages (:func:`ssmkit.runtime.huge_page_buffer`).

    Decoding one token at batch 1 reads every weight once, so its speed is the rate at which
    memory streams in; with 2 MB pages the stream takes far fewer TLB misses (measured in
    docs/pretrained.md). The parameters stay the same ``nn.Parameter`` objects (their ``.data``
    moves; values, dtypes, shapes and requires_grad are unchanged); ``copy_values=False`` leaves
    the new memory uninitialised, for a caller about to load every value. Modules with a
    parameter off the CPU are left alone. Returns the number of bytes packed (0: nothing done)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    params = list(module.parameters())
    if not params or any(p.device.type != "cpu" for p in params):
        return 0
    sizes = [p.numel() * p.element_size() for p in params]
    starts = [0]
    for n in sizes:  # each parameter at the next 64-byte boundary
        starts.append(starts[-1] + -(-n // _ALIGN) * _ALIGN)
    block = runtime.huge_page_buffer(max(starts[-1], 1))
    with torch.no_grad():
        for p, n, pos in zip(params, sizes, starts):
            view = block[pos:pos + n].view(p.dtype).view(p.shape)
            if copy_values:
                view.copy_(p.data)
            p.data = view
    return starts[-1]
