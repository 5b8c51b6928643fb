"""Look inside trained state-space layers: kernels, poles, frequency responses, Δ, memory
lengths and Hankel singular values, as numbers (:func:`inspect_model`) and as figures with an
index.html (:func:`write_report`); and write the reduced copy of a trained run
(:func:`reduce_run`). docs/inspect.md explains each quantity.

Per layer kind:

- S4, S4D, RTF (LTI): kernel ``K_k = C Ā^k B̄`` per channel (``layer.kernel(L)``); poles = the
  eigenvalues of the discrete ``Ā`` (``discrete_ssm()``; for RTF the roots of its denominator);
  ``H(e^{iω}) = D + Σ_k K_k e^{-iωk}``; Δ per channel (S4, S4D); Hankel singular values.
- S5: the diagonal ``Λ̄`` and ``B̄`` read through ``step`` (state ``x' = Λ̄ x + B̄ u``), ``C`` from the
  parameters: kernel from input channel h to the pre-activation output h; Δ per mode.
- Mamba, Mamba-2: Δ is a function of the input; its distribution over a batch of the task's
  inputs (no fixed kernel).

The effective memory length of a channel is the smallest lag m whose first m kernel taps hold
99% of the kernel's energy ``Σ_k K_k²`` (the total from the Gramian, ``C P Cᵀ``, when the system
is stable; ``inf`` if m exceeds the window L).
"""
from __future__ import annotations

import copy
import html
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .._checks import check_choice, check_fraction, check_positive_int
from ..layers import RTF, S4, S4D, S5, Mamba, Mamba2
from ..layers.lti_base import LTILayer
from ..reduction import (UnstableSystemError, error_bound, gramians, hankel_singular_values, real_realization,
                         reduce_model)

__all__ = ["LayerInspection", "inspect_layer", "inspect_model", "inspect_run", "memory_length", "write_report",
           "reduce_run"]


@dataclass
class LayerInspection:
    """The numbers behind one layer's figures (numpy arrays; channels first).

    ``kernels`` (H, L); ``poles`` (H, N) complex (discrete, both of each conjugate pair);
    ``omega`` (F,) and ``response`` (H, F) complex ``H(e^{iω})``; ``dt`` (Δ values, any shape);
    ``memory`` (H,) lags (``inf``: beyond L); ``hsv`` (H, N) Hankel singular values.
    Fields a layer kind has no value for are ``None``.
    """

    name: str
    kind: str
    kernels: Optional[np.ndarray] = None
    poles: Optional[np.ndarray] = None
    omega: Optional[np.ndarray] = None
    response: Optional[np.ndarray] = None
    dt: Optional[np.ndarray] = None
    memory: Optional[np.ndarray] = None
    hsv: Optional[np.ndarray] = None
    notes: List[str] = field(default_factory=list)

    def summary(self) -> dict:
        """JSON-ready per-layer numbers (no kernels)."""
        out: Dict[str, object] = {"name": self.name, "kind": self.kind, "notes": self.notes}
        if self.memory is not None:
            m = self.memory
            out["memory"] = [None if not np.isfinite(v) else int(v) for v in m]
            med = float(np.median(m))
            out["memory_median"] = med if np.isfinite(med) else None  # None: beyond the window
        if self.dt is not None:
            d = self.dt.ravel()
            out["dt"] = {"min": float(d.min()), "median": float(np.median(d)), "max": float(d.max()), "count": int(d.size)}
        if self.poles is not None:
            out["spectral_radius"] = float(np.abs(self.poles).max())
        if self.hsv is not None:
            out["hsv"] = self.hsv.tolist()
            out["order_for_1pct"] = [_order_at(s, 0.01) for s in self.hsv]
        return out


def _order_at(hsv: np.ndarray, rel: float) -> int:
    """Smallest r with bound 2 Σ_{i>r} σ_i <= rel · 2 Σ σ_i (the bound of order 0)."""
    total = error_bound(hsv, 0)
    for r in range(hsv.size + 1):
        if error_bound(hsv, r) <= rel * total:
            return r
    return int(hsv.size)  # pragma: no cover - r = size always qualifies


def memory_length(kernels, fraction: float = 0.99, total=None) -> np.ndarray:
    """Per channel, the smallest lag m with ``Σ_{k<m} K_k² >= fraction · E`` where ``E`` is
    ``total`` (H,) (the energy of the infinite kernel) or, by default, the energy in the window.
    ``inf`` where the window is too short to reach it. ``kernels``: (H, L)."""
    K = kernels.detach().double().cpu().numpy() if isinstance(kernels, torch.Tensor) else np.asarray(kernels, float)
    if K.ndim != 2:
        raise ValueError(f"kernels must have shape (H, L), got {K.shape}")
    check_fraction("fraction", fraction, allow_zero=False, allow_one=True)
    cum = np.cumsum(K**2, axis=1)
    E = cum[:, -1] if total is None else np.asarray(total, dtype=np.float64)
    if E.shape != (K.shape[0],):
        raise ValueError(f"total must have shape ({K.shape[0]},), got {E.shape}")
    out = np.full(K.shape[0], np.inf)
    for h in range(K.shape[0]):
        if E[h] <= 0:
            out[h] = 0
            continue
        hit = np.nonzero(cum[h] >= fraction * E[h] * (1 - 1e-12))[0]
        if hit.size:
            out[h] = hit[0] + 1
    return out


def _freq_grid(L: int, n: int) -> np.ndarray:
    return np.geomspace(min(np.pi / L, 1e-3), np.pi, n)


def _lti_inspection(name: str, kind: str, layer, L: int, n_freq: int, with_hsv: bool) -> LayerInspection:
    from ..reduction import frequency_response

    lay = copy.deepcopy(layer).double()
    with torch.no_grad():
        K = lay.kernel(L).cpu().numpy()
        Ad, Bd, C, D = lay.discrete_ssm()
    H = K.shape[0]
    omega = _freq_grid(L, n_freq)
    poles, resp, energy, hsvs, notes = [], [], np.zeros(H), [], []
    stable = True
    for h in range(H):
        A, B, Cr = real_realization(Ad[h], Bd[h], C[h])
        poles.append(np.linalg.eigvals(A))
        resp.append(frequency_response(A, B, Cr, omega, float(D[h].detach())))
        if stable:
            try:
                P, Q = gramians(A, B, Cr)
                energy[h] = float(Cr @ P @ Cr)
                if with_hsv:
                    hsvs.append(hankel_singular_values(A, B, Cr, gramians_=(P, Q)))
            except UnstableSystemError:
                stable = False
                notes.append(f"channel {h} (and perhaps others) has a pole on or outside the unit circle: no Hankel "
                             "singular values; memory measured within the window")
    memory = memory_length(K, 0.99, energy if stable else None)
    Nmax = max(p.size for p in poles)
    P_ = np.full((H, Nmax), np.nan + 0j)
    for h, p in enumerate(poles):
        P_[h, : p.size] = p
    hsv = None
    if stable and with_hsv:
        hsv = np.zeros((H, max(s.size for s in hsvs)))
        for h, s in enumerate(hsvs):
            hsv[h, : s.size] = s
    dt = dict(layer.named_parameters()).get("log_dt")
    dt = None if dt is None else np.exp(dt.detach().double().cpu().numpy())
    return LayerInspection(name, kind, K, P_, omega, np.stack(resp), dt, memory, hsv, notes)


def _s5_inspection(name: str, layer: S5, L: int, n_freq: int) -> LayerInspection:
    lay = copy.deepcopy(layer).double()
    H, M = lay.d_model, lay.d_state // 2
    with torch.no_grad():
        ones = torch.ones(1, M, dtype=torch.complex128)
        _, dA = lay.step(torch.zeros(1, H, dtype=torch.float64), ones)  # x' = Λ̄ · 1
        _, dB = lay.step(torch.eye(H, dtype=torch.float64), torch.zeros(H, M, dtype=torch.complex128))  # rows: B̄[:, h]
    dA = dA[0].numpy()
    dB = dB.numpy()  # (H, M): response of the state to input channel h
    C = torch.view_as_complex(lay.C.detach()).numpy()  # (H, M)
    D = lay.D.detach().numpy()
    k = np.arange(L)
    # K_h[k] = 2 Re Σ_m C[h,m] Λ̄_m^k B̄[m,h]  (input channel h -> pre-activation output h)
    res = C * dB  # (H, M)
    K = 2 * (res @ (dA[:, None] ** k[None, :])).real
    omega = _freq_grid(L, n_freq)
    z = np.exp(-1j * omega)
    resp = D[:, None] + (res[:, :, None] / (1 - z[None, None, :] * dA[None, :, None])).sum(1)
    resp = resp + (res.conj()[:, :, None] / (1 - z[None, None, :] * dA.conj()[None, :, None])).sum(1)
    poles = np.broadcast_to(np.concatenate([dA, dA.conj()]), (H, 2 * M)).copy()
    dt = np.exp(dict(lay.named_parameters())["log_dt"].detach().numpy())
    notes = ["S5 mixes channels: kernels and responses are from input channel h to the pre-activation output h"]
    return LayerInspection(name, "s5", K, poles, omega, resp, dt, memory_length(K, 0.99), None, notes)


def _mamba_dt(model, layers: Dict[str, torch.nn.Module], task, batch_size: int) -> Dict[str, np.ndarray]:
    """Δ of every Mamba / Mamba-2 layer over one batch of the task's test inputs (real positions)."""
    from ..tasks.base import pad_collate

    data = task.test if task.test is not None and len(task.test) else task.train
    x, _, mask = pad_collate([data[i] for i in range(min(batch_size, len(data)))])
    got: Dict[str, torch.Tensor] = {}
    hooks = []
    unfused = []  # Mamba layers run their composed path here, which calls dt_proj as a module
    for name, layer in layers.items():
        if isinstance(layer, Mamba):  # Δ = softplus(dt_proj(·))
            if layer.fused:
                layer.fused = False
                unfused.append(layer)
            hooks.append(layer.dt_proj.register_forward_hook(
                lambda m, i, o, name=name: got.__setitem__(name, F.softplus(o))))
        else:  # Mamba-2: in_proj's last nheads outputs, Δ = softplus(· + dt_bias)
            hooks.append(layer.in_proj.register_forward_hook(
                lambda m, i, o, name=name, layer=layer: got.__setitem__(
                    name, F.softplus(o[..., -layer.nheads:] + layer.dt_bias))))
    try:
        with torch.no_grad():
            model(x, mask=None if bool(mask.all()) else mask)
    finally:
        for h in hooks:
            h.remove()
        for layer in unfused:
            layer.fused = True
    return {n: got[n][mask].double().cpu().numpy() for n in got}


def inspect_layer(layer, L: int = 4096, n_freq: int = 400, name: str = "layer", hsv: bool = True) -> LayerInspection:
    """The numbers of :class:`LayerInspection` for one S4, S4D, RTF or S5 layer, with kernels of
    length ``L`` (Mamba and Mamba-2 need inputs: use :func:`inspect_model`)."""
    check_positive_int("L", L)
    check_positive_int("n_freq", n_freq, minimum=2)
    if isinstance(layer, LTILayer):
        kind = "s4d" if isinstance(layer, S4D) else "s4" if isinstance(layer, S4) else "rtf" if isinstance(layer, RTF) \
            else type(layer).__name__.lower()
        return _lti_inspection(name, kind, layer, L, n_freq, hsv)
    if isinstance(layer, S5):
        return _s5_inspection(name, layer, L, n_freq)
    raise TypeError(f"layer must be an S4, S4D, RTF or S5 layer, got {type(layer).__name__} "
                    "(Mamba and Mamba-2: use inspect_model with a task)")


def inspect_model(model, task=None, L: Optional[int] = None, n_freq: int = 400, batch_size: int = 16,
                  hsv: bool = True) -> List[LayerInspection]:
    """One :class:`LayerInspection` per sequence layer of ``model``, in order. ``task`` supplies
    inputs for Mamba/Mamba-2 Δ and the default window ``L = max(16384, 8·task.max_len)``."""
    if L is None:
        L = max(16384, 8 * int(getattr(task, "max_len", 0) or 0))
    check_positive_int("L", L)
    check_positive_int("batch_size", batch_size)
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, (LTILayer, S5, Mamba, Mamba2))]
    if not found:
        raise ValueError("model has no S4, S4D, RTF, S5, Mamba or Mamba-2 layer to inspect")
    selective = {n: m for n, m in found if isinstance(m, (Mamba, Mamba2))}
    dts = {}
    if selective:
        if task is None:
            raise ValueError("task is required to inspect Mamba / Mamba-2 layers (their Δ depends on the input)")
        dts = _mamba_dt(model, selective, task, batch_size)
    out = []
    for n, m in found:
        if n in selective:
            kind = "mamba" if isinstance(m, Mamba) else "mamba2"
            out.append(LayerInspection(n, kind, dt=dts[n], notes=[
                f"Δ over {min(batch_size, len(task.test or task.train))} test sequences of {task.name}, every real position"]))
        else:
            out.append(inspect_layer(m, L, n_freq, name=n, hsv=hsv))
    return out


def inspect_run(run, L: Optional[int] = None, n_freq: int = 400, batch_size: int = 16):
    """Load a run folder (``ssmkit.train.load_model``) and inspect it: ``(inspections, config, task)``."""
    from ..train import load_model

    model, config, task = load_model(run)
    return inspect_model(model, task, L, n_freq, batch_size), config, task


# ---- figures --------------------------------------------------------------------------------------

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

def reduce_run(run, out, order: Optional[int] = None, tolerance: Optional[float] = None, to: str = "s4d",
               n_grid: int = 4096) -> dict:
    """Reduce every LTI layer of the trained run ``run`` (:func:`ssmkit.reduction.reduce_model`)
    and write a new run folder ``out`` that ``load_model`` (hence ``ssmkit evaluate``, ``generate``,
    ``inspect``) accepts: a checkpoint whose config builds the reduced model, plus
    ``reduction.json`` (orders, Hankel singular values, bounds, measured errors). ``out`` must
    not exist; it is written beside itself and renamed into place when complete."""
    from ..train import TrainConfig, load_model
    from ..train.checkpoint import save_checkpoint

    check_choice("to", to, ("s4d", "rtf"))
    out = Path(out)
    if out.exists():
        raise ValueError(f"out {str(out)!r} already exists; reduce never overwrites a folder: choose a new one")
    model, config, task = load_model(run)
    l_max = max(1, task.max_len)
    new_model, reports = reduce_model(model, order, tolerance=tolerance, to=to, l_max=l_max, n_grid=n_grid)
    d_states = {r.d_state for r in reports.values()}
    if len(d_states) != 1:  # pragma: no cover - one order for the model gives one state size
        raise ValueError(f"reduced layers have different state sizes {sorted(d_states)}")
    cfg = config.to_dict()
    cfg.update(layer=to, d_state=d_states.pop(), init_from="",
               layer_options={"discretization": "zoh"} if to == "s4d" else {"l_max": l_max})
    new_config = TrainConfig.from_dict(cfg)
    source_order = max(int(getattr(m, "d_state", 0)) for n, m in model.named_modules() if n in reports)
    record = {"source": str(Path(run).resolve()), "source_layer": config.layer, "source_d_state": config.d_state,
              "source_order": source_order, "order": int(max(int(r.orders.max()) for r in reports.values())),
              "requested_order": order, "tolerance": tolerance, "target": to, "d_state": new_config.d_state,
              "layers": {n: {**r.summary(), "hsv": r.hsv.tolist()} for n, r in reports.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_checkpoint(tmp, 0, new_model, {"reduced_from": record["source"]}, new_config.to_dict())
        (tmp / "reduction.json").write_text(json.dumps(record, indent=1))
        if out.exists():
            raise ValueError(f"out {str(out)!r} appeared while reducing; reduce never overwrites a folder")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record
