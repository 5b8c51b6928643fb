"""Training throughput per layer family on the same footing.

Run: .venv/bin/python benchmarks/bench_training.py
A 2-layer backbone (d_model 64) classifies length-196 sequences (sequential MNIST at 14x14)
in batches of 32; each layer family uses its default state size. Prints sequences/s for
forward + backward + AdamW step, averaged over 10 steps after 2 warm-up steps, and the ratio
to S4D.
"""
from __future__ import annotations

import time

import torch

from ssmkit.layers import available_layers
from ssmkit.models import Backbone, SequenceClassifier


def throughput(layer: str, B: int = 32, L: int = 196, steps: int = 10) -> float:
    torch.manual_seed(0)
    kw = {"l_max": L} if layer in ("rtf", "s4") else {}
    model = SequenceClassifier(Backbone(64, 2, layer, kw, d_input=1), 10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(B, L, 1), torch.randint(0, 10, (B,))
    for i in range(steps + 2):
        if i == 2:
            t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * B / (time.perf_counter() - t)


def main():
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, 2 threads; d_model 64, 2 layers, batch 32, length 196")
    res = {name: throughput(name) for name in available_layers()}
    for name, r in sorted(res.items(), key=lambda kv: -kv[1]):
        print(f"{name:>7}: {r:8.1f} sequences/s  ({r / res['s4d']:.2f}x S4D)")


if __name__ == "__main__":
    main()
