"""The numbers of :mod:`ssmkit.inspection`: per layer, kernels, poles, frequency responses, Δ,
memory lengths and Hankel singular values (:class:`LayerInspection`, :func:`inspect_layer`,
:func:`inspect_model`, :func:`inspect_run`). docs/inspect.md explains each quantity."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .._checks import check_fraction, check_positive_int
from ..layers import RTF, S4, S4D, S5, Mamba, Mamba2
from ..layers.lti_base import LTILayer
from ..reduction import UnstableSystemError, error_bound, gramians, hankel_singular_values, real_realization

__all__ = ["LayerInspection", "inspect_layer", "inspect_model", "inspect_run", "memory_length"]


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
