"""Whole language models on the CPU: ssmkit against transformers' CPU path on the same random
weights, and against two physical bounds measured in the same run.

Run (one thread; the shapes of mamba-130m and mamba2-130m, random weights, no download):

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_lm.py
    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_lm.py --quick   # small shapes only

Measured, per model:
- prompt forward (logits of every position) at batch 1 and 4, lengths 512 and 2048, float32;
- greedy decode tokens/s at batch 1 and 4, float32 and bfloat16 weights (the state and the scan
  accumulate in float32 in ssmkit): per-token time = (time of n+1 new tokens - time of 1) / n,
  both taken back to back, the median over rounds; the bfloat16 rows also time transformers'
  float32 decode in the same rounds (the target compares bfloat16 with it);
- the bandwidth bound of decode: bytes of weights read per token (every weight matrix once;
  the embedding only once, as the LM head, when tied; one row otherwise) over the memory
  bandwidth measured here (the largest of three 256 MB reads: a sum, a copy (counted as read +
  write) and BLAS's float32 matrix-vector product over 1024 long rows, which one core reads as
  several concurrent streams, faster than a single one; each on ordinary memory and on a
  huge-page block like the one load_pretrained packs the weights into; measured at the start,
  and the matrix-vector read again in the same rounds as each decode timing: the larger is used);
- the matmul bound of the prompt forward: 2 x (weights of every linear map) x tokens FLOPs
  over the float32 matmul rate measured here (the scan, conv and norms are not counted, so
  the bound is optimistic).
Each prompt timing is the fastest of a few repeats, ssmkit and transformers alternated. The machine
may be shared: the ratios measured in one run are what to read, not the absolute times.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import alternate  # noqa: E402

torch.set_num_threads(1)
warnings.filterwarnings("ignore")

MODELS = {
    # the released 130m shapes (config of state-spaces/mamba-130m-hf and mamba2-130m)
    "mamba-130m": dict(kind="mamba", d_model=768, n_layers=24, vocab=50280, d_state=16),
    "mamba2-130m": dict(kind="mamba2", d_model=768, n_layers=24, vocab=50288, d_state=128, headdim=64, ngroups=1,
                        chunk=256),
    # a small model, where per-token overhead dominates decode
    "mamba-small": dict(kind="mamba", d_model=256, n_layers=4, vocab=256, d_state=16),
    "mamba2-small": dict(kind="mamba2", d_model=256, n_layers=4, vocab=256, d_state=64, headdim=64, ngroups=1,
                         chunk=256),
}


def _hf_model(spec):
    from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=spec["vocab"], hidden_size=spec["d_model"], num_hidden_layers=spec["n_layers"],
                  state_size=spec["d_state"], tie_word_embeddings=True, eos_token_id=None, pad_token_id=0)
    if spec["kind"] == "mamba":
        return MambaForCausalLM(MambaConfig(**common)).eval()
    E = 2 * spec["d_model"]
    return Mamba2ForCausalLM(Mamba2Config(num_heads=E // spec["headdim"], head_dim=spec["headdim"],
                                          n_groups=spec["ngroups"], chunk_size=spec["chunk"], **common)).eval()


def _time(fn, repeats=3):
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _alternate(fns, repeats):
    """Fastest time of each function over ``repeats`` rounds, the functions alternated in every
    round (on a shared machine the fastest round is the one least disturbed by other work)."""
    return {k: min(v) for k, v in alternate(fns, repeats).items()}


def _per_token(gens, n_new, repeats):
    """Median over ``repeats`` rounds of the per-token time ``(t(n_new + 1) - t(1)) / n_new`` of
    each generator, both times taken back to back in the same round and the generators alternated
    (a difference of two times from different moments is what a shared machine spoils)."""
    per = {k: [] for k in gens}
    for _ in range(repeats):
        for k, fn in gens.items():
            t0 = time.perf_counter()
            fn(1)
            t1 = time.perf_counter()
            fn(n_new + 1)
            t2 = time.perf_counter()
            per[k].append(max((t2 - t1) - (t1 - t0), 1e-9) / n_new)
    return {k: statistics.median(v) for k, v in per.items()}


def _matvec_read(block: torch.Tensor):
    """A function reading the float32 ``block`` once as BLAS's matrix-vector product over 1024
    long rows (one core reads them as several concurrent streams, faster than a single one)."""
    rows, v = block.view(1024, -1), torch.randn(block.numel() // 1024)
    return lambda: torch.mv(rows, v)


def bandwidth():
    """Bytes per second: the largest of a read (sum), a copy (counted as read + write) and a BLAS
    matrix-vector product over 1024 rows of 256 kB (torch.mv; it reads several rows as concurrent
    streams, as ssmkit's decode kernel does), each on ordinary memory and on a huge-page block
    (where ssmkit's load_pretrained puts the weights, see ssmkit.runtime.huge_page_buffer), so the
    bound holds for all of them."""
    from ssmkit.runtime import huge_page_buffer

    n = 64 * 2 ** 20  # 256 MB of float32
    best = 0.0
    for src, dst in ((torch.randn(n), torch.empty(n)),
                     (huge_page_buffer(4 * n).view(torch.float32), huge_page_buffer(4 * n).view(torch.float32))):
        src.normal_(), dst.copy_(src), src.sum()
        t_read = min(_time(lambda: src.sum(), 1) for _ in range(5))
        t_copy = min(_time(lambda: dst.copy_(src), 1) for _ in range(5))
        read = _matvec_read(src)
        t_mv = min(_time(read, 1) for _ in range(5))
        best = max(best, n * 4 / t_read, 2 * n * 4 / t_copy, n * 4 / t_mv)
    return best


def matmul_rate(dtype=torch.float32):
    a, b = torch.randn(2048, 768, dtype=dtype), torch.randn(768, 1536, dtype=dtype)
    a @ b
    t = min(_time(lambda: a @ b, 1) for _ in range(5))
    return 2 * 2048 * 768 * 1536 / t


def weight_bytes_per_token(model) -> int:
    """Bytes of parameters read to decode one token (each tensor once; an untied embedding: one row)."""
    seen, total = set(), 0
    emb = model.backbone.encoder.weight
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if p is emb and not model.tie_embeddings:
            total += p.shape[1] * p.element_size()
        else:
            total += p.numel() * p.element_size()
    return total


def linear_params(model) -> int:
    seen, n = set(), 0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            n += m.weight.numel()
    return n


@contextlib.contextmanager
def _quiet():
    logging.disable(logging.WARNING)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        yield
    logging.disable(logging.NOTSET)


def bench_model(name, spec, shapes, batches, n_new, repeats, rows, bw, rate):
    from ssmkit.pretrained import load_pretrained

    with _quiet():
        hf = _hf_model(spec)
        with tempfile.TemporaryDirectory() as d:
            hf.save_pretrained(d)
            t0 = time.perf_counter()
            ours, _ = load_pretrained(d)
            t_load = time.perf_counter() - t0
            ours16, _ = load_pretrained(d, dtype="bfloat16")
    hf16 = _hf_model(spec).to(torch.bfloat16)
    hf16.load_state_dict({k: v.to(torch.bfloat16) for k, v in hf.state_dict().items()})
    print(f"\n{name}: {sum(p.numel() for p in ours.parameters()) / 1e6:.1f}M parameters, loaded in {t_load:.1f} s", flush=True)
    g = torch.Generator().manual_seed(0)
    lin = linear_params(ours)
    # prompt forward, float32
    for b, L in shapes:
        if True:
            x = torch.randint(0, spec["vocab"], (b, L), generator=g)
            with torch.no_grad(), _quiet():
                ours(x[:, :64]), hf(x[:, :64])  # warm-up
                t = _alternate({"ssmkit": lambda: ours(x), "transformers": lambda: hf(x).logits},
                               1 if L * b >= 2048 else repeats)
            bound = 2 * lin * b * L / rate
            rows.append(dict(model=name, what=f"prompt forward b={b} L={L} float32", ssmkit_s=t["ssmkit"],
                             transformers_s=t["transformers"], bound_s=bound, bound="matmul"))
            _print(rows[-1])
    # greedy decode; a 256 MB read (the matrix-vector product of bandwidth()) is timed in the same
    # rounds, so that the bound follows the machine's bandwidth at the time of the decode
    from ssmkit.runtime import huge_page_buffer

    read = _matvec_read(huge_page_buffer(2 ** 28).view(torch.float32).normal_())

    def read_gen(n):
        for _ in range(n):
            read()

    for dtype, (m_ours, m_hf) in (("float32", (ours, hf)), ("bfloat16", (ours16, hf16))):
        for b in batches:
            x = torch.randint(0, spec["vocab"], (b, 16), generator=g)

            def ours_gen(n, m=m_ours, x=x):
                m.generate(x, n, temperature=0)

            def hf_gen(n, m=m_hf, x=x):
                m.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False)

            gens = {"ssmkit": ours_gen, "transformers": hf_gen, "read": read_gen}
            if dtype == "bfloat16":  # the target compares bfloat16 decode with transformers' float32 decode
                gens["transformers_f32"] = lambda n, x=x: hf.generate(x, max_new_tokens=n, min_new_tokens=n,
                                                                      do_sample=False)
            with torch.no_grad(), _quiet():
                for fn in gens.values():
                    fn(4)
                per = _per_token(gens, n_new, repeats)
            bw_now = max(bw, 2 ** 28 / per["read"])
            bound = weight_bytes_per_token(m_ours) / bw_now  # per token, batch independent
            rows.append(dict(model=name, what=f"decode b={b} {dtype}", ssmkit_s=per["ssmkit"],
                             transformers_s=per["transformers"], bound_s=bound, bound="bandwidth", bandwidth=bw_now,
                             ssmkit_tok_s=b / per["ssmkit"], transformers_tok_s=b / per["transformers"]))
            if "transformers_f32" in per:
                rows[-1]["transformers_f32_s"] = per["transformers_f32"]
            _print(rows[-1])
    del hf, hf16, ours, ours16


def _print(r):
    extra = ""
    if "ssmkit_tok_s" in r:
        extra = f"  ({r['ssmkit_tok_s']:.1f} vs {r['transformers_tok_s']:.1f} tokens/s)"
    if "bandwidth" in r:
        extra += f"  [bandwidth {r['bandwidth'] / 1e9:.1f} GB/s]"
    if "transformers_f32_s" in r:
        extra += f"; transformers float32 {r['transformers_f32_s'] * 1e3:.1f} ms: {r['transformers_f32_s'] / r['ssmkit_s']:.2f}x"
    print(f"  {r['what']:<34} ssmkit {r['ssmkit_s'] * 1e3:9.1f} ms  transformers {r['transformers_s'] * 1e3:9.1f} ms  "
          f"speed-up {r['transformers_s'] / r['ssmkit_s']:5.2f}x  {r['bound']} bound {r['bound_s'] * 1e3:8.1f} ms "
          f"(ssmkit at {r['ssmkit_s'] / r['bound_s']:5.2f}x the bound){extra}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only the small models, short lengths")
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--json", default=None, help="write the rows to this file")
    ap.add_argument("--shapes", nargs="*", default=None, metavar="BxL",
                    help="prompt-forward shapes, e.g. 1x512 4x512 1x2048 (default: batch 1 and 4 at 512 and 2048; "
                         "none given: decode only)")
    ap.add_argument("--new-tokens", type=int, default=None, help="decode tokens timed per measurement (default 32)")
    ap.add_argument("--no-decode", action="store_true", help="prompt forward only")
    ap.add_argument("--decode-batches", nargs="*", type=int, default=[1, 4], metavar="B",
                    help="batch sizes of the decode rows (default: 1 4)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds per measurement (medians / minima over them)")
    args = ap.parse_args()
    bw, rate = bandwidth(), matmul_rate()
    print(f"one thread; memory bandwidth {bw / 1e9:.1f} GB/s, float32 matmul {rate / 1e9:.1f} GFLOP/s, "
          f"bfloat16 matmul {matmul_rate(torch.bfloat16) / 1e9:.1f} GFLOP/s", flush=True)
    names = args.models or (["mamba-small", "mamba2-small"] if args.quick else list(MODELS))
    rows = []
    if args.shapes is not None:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
    else:
        shapes = [(b, L) for L in ((512,) if args.quick else (512, 2048)) for b in (1, 4)]
    n_new = args.new_tokens or (16 if args.quick else 32)
    for name in names:
        bench_model(name, MODELS[name], shapes, () if args.no_decode else tuple(args.decode_batches), n_new,
                    args.repeats, rows, bw, rate)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(bandwidth=bw, matmul=rate, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
