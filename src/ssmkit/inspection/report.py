"""The figures of :mod:`ssmkit.inspection`: one PNG per figure and layer, the numbers as JSON
and an ``index.html`` with every figure and its caption (:func:`write_report`)."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import List

import numpy as np

from .._checks import check_positive_int
from .analysis import LayerInspection, _order_at

__all__ = ["write_report"]


def _pick_channels(ins: LayerInspection, n: int) -> List[int]:
    H = ins.kernels.shape[0]
    if ins.memory is None or H <= n:
        return list(range(min(n, H)))
    m = np.where(np.isfinite(ins.memory), ins.memory, np.inf)
    order = np.argsort(m, kind="stable")
    return sorted({int(order[round(q * (H - 1))]) for q in np.linspace(0, 1, n)})


def _fit(fig) -> None:
    """Fixed margins (tight_layout would render every figure twice, which dominates the cost)."""
    two = len(fig.axes) > 1
    fig.subplots_adjust(left=0.08 if two else 0.14, right=0.98, bottom=0.14, top=0.9, wspace=0.3)


def _layer_figures(ins: LayerInspection, folder: Path, n_channels: int, task_len: int, plt) -> List[tuple]:
    """Write this layer's PNGs into folder; return [(file, caption)]."""
    figs = []
    tag = ins.name.replace(".", "_")

    def save(fig, stem, caption):
        path = folder / f"{tag}_{stem}.png"
        _fit(fig)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        figs.append((path.name, caption))

    if ins.kernels is not None:
        ch = _pick_channels(ins, n_channels)
        L = ins.kernels.shape[1]
        k = np.arange(L)
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.6))
        span = min(L, max(4 * task_len, 256)) if task_len else min(L, 1024)
        for h in ch:
            mem = ins.memory[h]
            lab = f"ch {h} (memory {'>' + str(L) if not np.isfinite(mem) else int(mem)})"
            a1.plot(k[:span], ins.kernels[h, :span], lw=1, label=lab)
            a2.loglog(k[1:] , np.abs(ins.kernels[h, 1:]) + 1e-300, lw=0.8, label=lab)
        if task_len:
            a1.axvline(task_len, color="k", ls=":", lw=0.8)
            a2.axvline(task_len, color="k", ls=":", lw=0.8, label=f"task length {task_len}")
        a1.set(xlabel="lag k", ylabel="K_k", title="kernel (linear time)")
        a2.set(xlabel="lag k", ylabel="|K_k|", title="kernel magnitude (log time)", ylim=(
            max(1e-12, np.abs(ins.kernels[ch]).max() * 1e-8), np.abs(ins.kernels[ch]).max() * 2))
        a2.legend(fontsize=7)
        save(fig, "kernels", f"Learned convolution kernels K of {len(ch)} channels (chosen from the shortest to the "
             "longest memory), on a linear time axis (left, first lags) and log-log (right). The dotted line is "
             "the task's sequence length.")
    if ins.poles is not None:
        p = ins.poles[np.isfinite(ins.poles)]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
        t = np.linspace(0, 2 * np.pi, 400)
        a1.plot(np.cos(t), np.sin(t), "k-", lw=0.8)
        a1.scatter(p.real, p.imag, s=4, alpha=0.5)
        a1.set(xlabel="Re z", ylabel="Im z", title="poles of Ā and the unit circle", aspect="equal")
        a2.scatter(np.abs(np.angle(p)) + 1e-6, np.clip(1 - np.abs(p), 1e-12, None), s=4, alpha=0.5)
        a2.set(xscale="log", yscale="log", xlabel="|arg z| (frequency, rad/sample)", ylabel="1 - |z| (decay per step)",
               title="near the unit circle")
        rho = float(np.abs(p).max()) if p.size else 0.0
        save(fig, "poles", f"Poles of the discrete system, all channels (spectral radius {rho:.6f}). Left: the complex "
             "plane with the unit circle. Right: distance to the circle (1 - |z|, the decay per step; time constant "
             "≈ 1/(1 - |z|) steps) against the angle (the oscillation frequency), on log axes.")
    if ins.response is not None:
        ch = _pick_channels(ins, n_channels)
        mag = np.abs(ins.response)
        fig, ax = plt.subplots(figsize=(7, 4))
        for h in range(mag.shape[0]):
            ax.loglog(ins.omega, mag[h], color="0.8", lw=0.5)
        for h in ch:
            ax.loglog(ins.omega, mag[h], lw=1.2, label=f"ch {h}")
        ax.set(xlabel="ω (rad/sample)", ylabel="|H(e^{iω})|", title="frequency response (all channels grey)")
        ax.legend(fontsize=7)
        save(fig, "frequency", "Magnitude of the frequency response H(e^{iω}) = D + Σ_k K_k e^{-iωk} of every channel "
             "(grey) and of the highlighted channels, on log axes (Bode-style).")
    if ins.dt is not None:
        d = ins.dt.ravel()
        fig, ax = plt.subplots(figsize=(6, 3.6))
        lo, hi = max(d.min(), 1e-12), max(d.max(), 1e-12)
        bins = np.geomspace(lo / 1.05, hi * 1.05, 40) if hi > lo * 1.1 else 20
        ax.hist(d, bins=bins)
        if isinstance(bins, np.ndarray):
            ax.set_xscale("log")
        ax.set(xlabel="Δ", ylabel="count", title=f"Δ distribution (median {np.median(d):.3g})")
        what = ("over the test inputs (one value per position and channel/head)" if ins.kind.startswith("mamba")
                else "one value per channel" if ins.kind != "s5" else "one value per mode")
        save(fig, "dt", f"Distribution of the step size Δ, {what}, log axis. 1/Δ is roughly the time scale (in steps) "
             "the layer resolves.")
    if ins.memory is not None:
        m = ins.memory
        fin = m[np.isfinite(m)]
        fig, ax = plt.subplots(figsize=(6, 3.6))
        if fin.size:
            ax.hist(fin, bins=np.geomspace(max(fin.min(), 1) / 1.05, fin.max() * 1.05 + 1, 30))
            ax.set_xscale("log")
        if task_len:
            ax.axvline(task_len, color="k", ls=":", label=f"task length {task_len}")
            ax.legend(fontsize=8)
        n_inf = int((~np.isfinite(m)).sum())
        ax.set(xlabel="lags holding 99% of the kernel energy", ylabel="channels",
               title="effective memory length" + (f" ({n_inf} beyond the window)" if n_inf else ""))
        save(fig, "memory", "Effective memory length per channel: the smallest lag m such that the first m kernel "
             "taps hold 99% of the kernel's total energy Σ K_k² (from the Gramian).")
    if ins.hsv is not None:
        s = ins.hsv / np.maximum(ins.hsv[:, :1], 1e-300)
        fig, ax = plt.subplots(figsize=(6, 3.8))
        i = np.arange(1, s.shape[1] + 1)
        for h in range(s.shape[0]):
            ax.semilogy(i, np.clip(s[h], 1e-17, None), color="0.75", lw=0.5)
        ax.semilogy(i, np.clip(np.median(s, 0), 1e-17, None), "k", lw=1.5, label="median channel")
        pos = s[s > 0]
        low = max(1e-17, 0.5 * pos.min()) if pos.size else 1e-17
        ax.set(xlabel="index i", ylabel="σ_i / σ_1", title="Hankel singular values", ylim=(low, 2))
        ax.legend(fontsize=8)
        r1 = [_order_at(h, 0.01) for h in ins.hsv]
        save(fig, "hsv", "Hankel singular values of each channel relative to its largest (grey) and the median "
             f"(black). A fast drop means the channel is compressible: the order whose bound 2Σ_(i>r) σ_i is 1% of "
             f"the order-0 bound is {int(np.median(r1))} for the median channel (max {max(r1)}).")
    return figs


def write_report(inspections: List[LayerInspection], out_dir, title: str = "ssmkit inspect", n_channels: int = 4,
                 task_len: int = 0) -> Path:
    """Write one PNG per figure and layer, ``inspection.json`` (the numbers) and ``index.html``
    (every figure with its caption) into ``out_dir``; returns the index path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_positive_int("n_channels", n_channels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    overview = _overview_figure(inspections, out, task_len, plt)
    for ins in inspections:
        figs = _layer_figures(ins, out, n_channels, task_len, plt)
        items = "\n".join(f'<figure><img src="{html.escape(f)}" alt="{html.escape(f)}"><figcaption>{html.escape(c)}'
                          f"</figcaption></figure>" for f, c in figs)
        notes = "".join(f"<p class=note>{html.escape(n)}</p>" for n in ins.notes)
        sections.append(f'<section><h2>{html.escape(ins.name)} <small>({ins.kind})</small></h2>{notes}\n{items}</section>')
    head = ""
    if overview:
        head = (f'<figure><img src="{overview[0]}" alt="overview"><figcaption>{html.escape(overview[1])}</figcaption>'
                "</figure>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}figure{display:inline-block;"
            "margin:.5em;vertical-align:top;max-width:560px}img{max-width:100%}figcaption{font-size:.85em;color:#333}"
            ".note{color:#735}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{head}\n" + "\n".join(sections) + "</body></html>")
    (out / "inspection.json").write_text(json.dumps([i.summary() for i in inspections], indent=1))
    (out / "index.html").write_text(page)
    return out / "index.html"


def _overview_figure(inspections: List[LayerInspection], out: Path, task_len: int, plt):
    with_hsv = [i for i in inspections if i.hsv is not None]
    with_mem = [i for i in inspections if i.memory is not None]
    if not with_hsv and not with_mem:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ins in with_hsv:
        s = ins.hsv / np.maximum(ins.hsv[:, :1], 1e-300)
        axes[0].semilogy(np.arange(1, s.shape[1] + 1), np.clip(np.median(s, 0), 1e-17, None), label=ins.name)
    axes[0].set(xlabel="index i", ylabel="median σ_i / σ_1", title="Hankel singular values per layer")
    if with_hsv:
        axes[0].legend(fontsize=7)
    for ins in with_mem:
        m = np.sort(np.where(np.isfinite(ins.memory), ins.memory, np.nan))
        axes[1].plot(m, np.linspace(0, 1, m.size), label=ins.name)
    if task_len:
        axes[1].axvline(task_len, color="k", ls=":", lw=0.8)
    axes[1].set(xscale="log", xlabel="effective memory length (lags)", ylabel="fraction of channels",
                title="memory length per layer (CDF)")
    if with_mem:
        axes[1].legend(fontsize=7)
    _fit(fig)
    fig.savefig(out / "overview.png", dpi=100)
    plt.close(fig)
    return ("overview.png", "Left: median normalised Hankel singular values of each layer (a faster drop = more "
            "compressible by balanced truncation). Right: cumulative distribution of the channels' effective "
            "memory lengths per layer; the dotted line is the task's sequence length.")


# ---- reduced runs ------------------------------------------------------------------------------
