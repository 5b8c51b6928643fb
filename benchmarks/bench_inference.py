"""End-to-end inference of whole models: this checkout against the baseline commit, in one run.

Run: .venv/bin/python benchmarks/bench_inference.py [--quick] [--baseline COMMIT] [--threads 1]

For every layer family, d_model 64 and 256:
- prompt: a 2-layer language model (vocabulary 256) runs a batch of prompts in parallel with
  ``forward(..., return_state=True)`` (what ``generate`` does first) at lengths 196, 1024 and
  4096, batch as in bench_training.py (about 6,272 tokens); tokens/s;
- decode: then 64 recurrent ``step``s at batch 1 (tokens/s), the per-token cost of generation.
Each measurement runs in a fresh process; new and baseline code alternate; medians and ratios.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

LAYERS = ["s4", "s4d", "rtf", "s5", "mamba", "mamba2"]


def worker(cfg: dict) -> dict:
    import torch

    from ssmkit.models import Backbone, LanguageModel

    torch.set_num_threads(int(cfg["threads"]))
    torch.manual_seed(0)
    layer, H, L, B = cfg["layer"], cfg["d_model"], cfg["length"], cfg["batch"]
    kw = {"l_max": L} if layer in ("rtf", "s4") else {}
    lm = LanguageModel(Backbone(H, 2, layer, kw, vocab_size=256), 256).eval()
    with torch.inference_mode():
        if cfg["mode"] == "prompt":
            x = torch.randint(0, 256, (B, L))
            lm(x[:, :8], return_state=True)  # warm-up
            n, t = 0, time.perf_counter()
            while True:
                lm(x, return_state=True)
                n += 1
                if n >= 2 and time.perf_counter() - t > cfg["seconds"]:
                    break
            return {"tok_per_s": n * B * L / (time.perf_counter() - t)}
        x = torch.randint(0, 256, (1, 16))
        _, states = lm(x, return_state=True)
        tok = x[:, -1]
        for _ in range(4):
            logits, states = lm.step(tok, states)
        n, t = 0, time.perf_counter()
        while n < cfg["tokens"]:
            logits, states = lm.step(tok, states)
            tok = logits.argmax(-1)
            n += 1
        return {"tok_per_s": n / (time.perf_counter() - t)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--baseline", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--layers", nargs="*", default=LAYERS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return
    import _versions

    widths = [64] if a.quick else [64, 256]
    lengths = [196] if a.quick else [196, 1024, 4096]
    configs = []
    for H in widths:
        for lay in a.layers:
            for L in lengths:
                configs.append(dict(mode="prompt", layer=lay, d_model=H, length=L, batch=max(1, 6272 // L),
                                    threads=a.threads, seconds=a.seconds))
            configs.append(dict(mode="decode", layer=lay, d_model=H, length=1, batch=1, threads=a.threads, tokens=64))
    base = a.baseline or _versions.BASELINE
    print(f"inference, tokens/s (median of {a.rounds} alternated runs, {a.threads} thread(s)); baseline {base}")
    print("| mode | layer | d_model | length | batch | this | baseline | speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for cfg, new, old, err in _versions.compare(Path(__file__), configs, "tok_per_s", base, a.rounds, a.threads):
        note = f" ({'; '.join(f'{k}: {v}' for k, v in err.items())})" if err else ""
        L = cfg["length"] if cfg["mode"] == "prompt" else "-"
        print(f"| {cfg['mode']} | {cfg['layer']} | {cfg['d_model']} | {L} | {cfg['batch']} | {new:.0f} | {old:.0f} | "
              f"{new / old:.2f}x |{note}", flush=True)


if __name__ == "__main__":
    main()
