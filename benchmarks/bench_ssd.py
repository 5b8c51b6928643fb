"""Mamba-2's SSD scan on the CPU: ssmkit's `ssd` (its native sequential kernel, the default on
a CPU, and its chunked torch path, ``native=False``) against the torch path of transformers'
Mamba-2 (`mamba2_chunk_scan`, the chunked SSD that `Mamba2Mixer` runs without CUDA kernels),
on the same inputs, in one process, alternating them.

Run: PYTHONPATH=src .venv/bin/python benchmarks/bench_ssd.py [--threads 1] [--repeats 5] [--layers-only]

A second table compares whole layers with the same weights: ssmkit's `Mamba2` (chunk 64)
against transformers' `Mamba2Mixer` (its torch fallback, chunk 256), forward, at d_model 768
(24 heads of 64, N = 128) and d_model 64, so the share of the projections shows; ssmkit's
layer runs both with its fused conv (the default) and with ``fused = False`` (the composed
torch operations), alternated in the same loop. ``--layers-only`` prints only this table.

ssmkit is called as its layers call it (inside `trusted_inputs`, so the full-tensor value
checks of the public entry are skipped): the native kernel, and the chunked path with its
default chunk of 64 steps (the result does not depend on the chunk length, only the work
does). transformers runs with its configured chunk of 256. Printed: median seconds of a
forward pass (inference, no autograd) and of forward + backward, and the speed-up
(transformers time / ssmkit time). Timings on a shared machine are noisy; the ratio, taken
from alternated runs, is the figure to read.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ssmkit._checks import trusted_inputs
from ssmkit.ops.ssd import ssd

# (batch, length, heads, head dim, state size, groups): the demo's training shape (d_model 64),
# a mamba2-130m layer (d_model 768) at two lengths, a batch of them, a small model at batch 8,
# a long sequence, and heads sharing two groups
SHAPES = [(32, 196, 2, 64, 64, 1), (1, 512, 24, 64, 128, 1), (1, 1024, 24, 64, 128, 1), (4, 512, 24, 64, 128, 1),
          (8, 512, 2, 64, 64, 1), (1, 4096, 8, 64, 128, 1), (8, 256, 8, 64, 64, 2)]


def _inputs(b, L, H, P, N, G, grad):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, L, H, P, generator=g)
    dt = torch.nn.functional.softplus(torch.randn(b, L, H, generator=g) - 2)
    A = -torch.rand(H, generator=g) - 0.5
    B, C = torch.randn(b, L, G, N, generator=g), torch.randn(b, L, G, N, generator=g)
    return [t.requires_grad_(grad) for t in (x, dt, A, B, C)]


def _transformers_scan():
    from transformers.models.mamba2 import modeling_mamba2 as mm

    fn = mm.mamba2_chunk_scan
    return getattr(fn, "__wrapped__", fn)  # the torch body, never a downloaded kernel


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layers-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.layers_only:
        layers(args.repeats)
        return
    theirs = _transformers_scan()

    def ours(native):
        def run(x, dt, A, B, C):
            with trusted_inputs():
                return ssd(x, dt, A, B, C, chunk_size=64, native=native)
        return run

    NAT, CH, TF = "ssmkit native", "ssmkit chunked (chunk 64)", "transformers torch SSD (chunk 256)"
    impls = {NAT: ours(None), CH: ours(False),
             TF: lambda x, dt, A, B, C: theirs(x, dt, A, B, C, chunk_size=256, return_final_states=True)}
    print(f"threads={args.threads}, repeats={args.repeats} (median)")
    print("| batch, L, heads, P, N, groups | mode | " + " | ".join(impls)
          + " | native vs chunked | native vs transformers |")
    print("|---|---|" + "---|" * (len(impls) + 2))
    for shape in SHAPES:
        for mode in ("forward", "forward+backward"):
            grad = mode != "forward"
            ins = _inputs(*shape, grad=grad)
            # same answer first
            with torch.no_grad():
                y2, h2 = impls[TF](*[t.detach() for t in ins])
                for name in (NAT, CH):
                    y1, h1 = impls[name](*[t.detach() for t in ins])
                    err = float((y1 - y2).abs().max() / y2.abs().max())
                    assert err < 1e-4, f"outputs of {name} differ: {err:.2g}"
            times = {k: [] for k in impls}
            for _ in range(args.repeats + 1):  # the first round warms up and is dropped
                for name, fn in impls.items():
                    t0 = time.perf_counter()
                    if grad:
                        y, h = fn(*ins)
                        (y.sum() + h.sum()).backward()
                    else:
                        with torch.no_grad():
                            fn(*ins)
                    times[name].append(time.perf_counter() - t0)
            med = {k: statistics.median(v[1:]) for k, v in times.items()}
            cells = " | ".join(f"{med[k]:.4f} s" for k in impls)
            print(f"| {', '.join(map(str, shape))} | {mode} | {cells} | **{med[CH] / med[NAT]:.2f}x** | "
                  f"**{med[TF] / med[NAT]:.1f}x** |", flush=True)
    layers(args.repeats)


def layers(repeats: int) -> None:
    import warnings

    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer
    from transformers.utils import logging as hf_logging

    from ssmkit.layers import Mamba2

    hf_logging.set_verbosity_error()
    print("\n| layer (d_model, N, head dim), batch x L | ssmkit Mamba2 | ssmkit, composed path | "
          "transformers Mamba2Mixer | speed-up |")
    print("|---|---|---|---|---|")
    for d, N, P, b, L in ((768, 128, 64, 1, 1024), (64, 64, 32, 8, 512)):
        torch.manual_seed(0)
        ours = Mamba2(d, d_state=N, headdim=P, ngroups=1, chunk_size=64)
        cfg = Mamba2Config(hidden_size=d, state_size=N, head_dim=P, num_heads=2 * d // P, n_groups=1, expand=2,
                           chunk_size=256, conv_kernel=4, use_bias=False, use_conv_bias=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = Mamba2Mixer(cfg, 0)
        theirs.load_state_dict(ours.state_dict())  # same parameter names and shapes
        x = torch.randn(b, L, d)
        def composed():
            ours.fused = False
            try:
                return ours(x)
            finally:
                ours.fused = True

        fns = {"ours": lambda: ours(x), "composed": composed, "theirs": lambda: theirs(x)}
        with torch.no_grad():
            y1, y2 = ours(x), theirs(x)
            err = float((y1 - y2).abs().max() / y2.abs().max())
            assert err < 1e-4, f"layers differ: {err:.2g}"
            times = {k: [] for k in fns}
            for _ in range(repeats + 1):
                for k, f in fns.items():
                    t0 = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v[1:]) for k, v in times.items()}
        print(f"| {d}, {N}, {P}, {b} x {L} | {med['ours']:.4f} s | {med['composed']:.4f} s | {med['theirs']:.4f} s | "
              f"**{med['theirs'] / med['ours']:.1f}x** |", flush=True)


if __name__ == "__main__":
    main()
