"""The HiPPO reconstruction experiment (Gu et al. 2020, Fig. 1 and 3): stream a signal into a
memory of N coefficients per measure, reconstruct the whole history from the final
coefficients, and measure the error; :func:`hippo_figure` also writes the figure and a JSON file.

The error is the relative mean squared error ``mean((û - u)²) / var(u)``; the memories and
their reconstruction are described in docs/math.md (HiPPO section).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Sequence, Tuple

import torch

from ._checks import check_choice, check_int
from .hippo import MEASURES, HiPPO
from .signals import make_signal

__all__ = ["memory_for", "reconstruct_history", "plot_reconstruction", "hippo_figure", "format_mse_table"]

BLOCK = 1000  # samples encoded per call, as a stream would arrive


def memory_for(measure: str, N: int, length: int) -> HiPPO:
    """The memory used for a record of ``length`` samples: windows span the whole record.

    ``legt``/``lmu``/``fout`` get a window of ``length`` samples. ``lagt`` has unit timescale:
    its Laguerre functions of order < N resolve roughly the last N/2 time units, so the record
    is mapped onto that horizon.
    """
    if measure == "lagt":
        horizon = N / 2
        return HiPPO(measure, N, dt=horizon / length, theta=horizon)
    return HiPPO(measure, N, dt=1.0 / length, theta=1.0)


def reconstruct_history(u: torch.Tensor, measures: Sequence[str], N: int, progress: bool = False
                        ) -> Tuple[Dict[str, float], Dict[str, torch.Tensor]]:
    """Encode ``u`` block by block with each measure; return the relative MSE per measure and
    the reconstructions of the whole history from the final coefficients."""
    from tqdm.auto import tqdm

    for m in measures:
        check_choice("measure", m, MEASURES)
    check_int("N", N, minimum=1)
    L = u.shape[0]
    results, recs = {}, {}
    bar = tqdm(total=len(measures) * L, desc="hippo", unit="sample", disable=not progress, leave=False)
    for m in measures:
        mem = memory_for(m, N, L)
        c = None
        for start in range(0, L, BLOCK):
            C = mem.encode(u[start:start + BLOCK], c0=c, k0=start)
            c = C[-1]
            bar.update(C.shape[0])
        rec = mem.reconstruct(c, L)
        recs[m] = rec
        results[m] = float((rec - u).pow(2).mean() / u.var().clamp(min=1e-300))
    bar.close()
    return results, recs


def plot_reconstruction(path, u: torch.Tensor, recs: Dict[str, torch.Tensor], N: int) -> Path:
    """The input with each reconstruction (top) and the absolute errors on a log scale (bottom),
    written atomically as a PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    L = u.shape[0]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    x = torch.arange(L)
    ax1.plot(x, u, color="black", lw=2.0, label="input u")
    for m, rec in recs.items():
        ax1.plot(x, rec, lw=1.0, label=f"{m} (N={N})")
        ax2.plot(x, (rec - u).abs(), lw=1.0, label=m)
    ax1.set_title(f"HiPPO reconstruction of the whole history from N={N} coefficients at t={L}")
    ax1.legend(loc="upper left", fontsize=8)
    ax2.set_yscale("log")
    ax2.set_xlabel("sample")
    ax2.set_ylabel("|error|")
    ax2.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def hippo_figure(out_dir, measures: Sequence[str] = ("legt", "legs", "lagt", "fout"), N: int = 64, length: int = 10_000,
                 signal: str = "sine", seed: int = 0, progress: bool = True) -> Dict[str, float]:
    """Encode ``signal`` with each measure, write ``out_dir/reconstruction.png`` and
    ``out_dir/hippo_mse.json``; return the relative MSE ``mean((û - u)²)/var(u)`` per measure."""
    for m in measures:
        check_choice("measure", m, MEASURES)
    check_int("N", N, minimum=1)
    u = make_signal(signal, length, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, recs = reconstruct_history(u, measures, N, progress=progress)
    plot_reconstruction(out / "reconstruction.png", u, recs, N)
    tmp = out / ".hippo_mse.json.tmp"
    tmp.write_text(json.dumps({"N": N, "length": u.shape[0], "signal": signal, "relative_mse": results}, indent=2))
    os.replace(tmp, out / "hippo_mse.json")
    return results


def format_mse_table(results: Dict[str, float]) -> str:
    """The relative MSE per measure as a two-column text table."""
    lines = [f"{'measure':<8} {'MSE / var(u)':>14}"]
    lines += [f"{m:<8} {v:>14.3e}" for m, v in results.items()]
    return "\n".join(lines)
