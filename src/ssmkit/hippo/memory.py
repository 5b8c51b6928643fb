"""Online HiPPO memory: compress a stream into N coefficients and reconstruct its past.

``HiPPO(measure, N).encode(u)`` returns the coefficients ``c_k`` after every sample;
``reconstruct(c_k, P)`` evaluates ``Σ_n c_n g_n(s)`` on ``P`` points of the measure's window
(:mod:`ssmkit.hippo.basis`). Time conventions: sample ``k`` holds the input over the step
ending at ``t_k``; for uniform steps ``t_k = (k+1)·dt``. LegS is run with its step-free
bilinear recurrence in O(N) per sample (:mod:`ssmkit.hippo.legs`); the translated measures
(``legt``, ``lmu``, ``lagt``, ``fout``) with their discretized LTI recurrence.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .._checks import (check_choice, check_finite, check_float, check_int, check_positive, check_positive_int,
                       check_tensor)
from .basis import basis
from .discretize import METHODS, discretize
from .legs import legs_scan, legs_step
from .measures import MEASURES, transition

__all__ = ["HiPPO"]


class HiPPO:
    """A HiPPO memory of order ``N`` for ``measure``.

    Args:
        measure: one of ``legt``, ``lmu``, ``legs``, ``lagt``, ``fout``.
        N: number of coefficients kept.
        dt: time per sample for the translated measures (LegS ignores it: it is scale-free).
        theta: window length (same time unit as ``dt``) of ``legt``/``lmu``/``fout``; for
            ``lagt`` the horizon that :meth:`reconstruct` shows. ``theta/dt`` samples per window.
        method: discretization of the translated measures (``bilinear``, ``zoh``,
            ``forward_euler``, ``backward_euler``).

    >>> import torch
    >>> mem = HiPPO("legs", N=32)
    >>> u = torch.sin(torch.linspace(0, 20, 1000, dtype=torch.float64))
    >>> c = mem.encode(u)               # (1000, 32): the memory after every sample
    >>> past = mem.reconstruct(c[-1], 1000)   # the whole history, from its 32 numbers
    >>> float((past - u).pow(2).mean()) < 1e-3
    True
    """

    def __init__(self, measure: str = "legs", N: int = 64, *, dt: float = 1e-3, theta: float = 1.0,
                 method: str = "bilinear"):
        check_choice("measure", measure, MEASURES)
        check_positive_int("N", N)
        check_positive("dt", dt)
        check_positive("theta", theta)
        check_choice("method", method, METHODS)
        self.measure, self.N, self.dt, self.theta, self.method = measure, N, float(dt), float(theta), method
        self.A, self.B = transition(measure, N, torch.float64, theta=theta)
        if measure != "legs":
            self.Ad, self.Bd = discretize(self.A, self.B, self.dt, method)

    def __repr__(self) -> str:
        return f"HiPPO(measure={self.measure!r}, N={self.N}, dt={self.dt:g}, theta={self.theta:g}, method={self.method!r})"

    # ------------------------------------------------------------------ encoding
    def _check_u(self, u) -> torch.Tensor:
        check_tensor("u", u, ndim=(1, 2), floating=True)
        if u.shape[-1] < 1:
            raise ValueError(f"u must hold at least one sample, got shape {tuple(u.shape)}")
        return u

    @staticmethod
    def _check_times(times, L: int) -> torch.Tensor:
        check_tensor("times", times, shape=(L,), floating=True)
        if L > 1 and not bool((torch.diff(times) > 0).all()):
            raise ValueError("times must be strictly increasing")
        return times.to(torch.float64)

    def encode(self, u: torch.Tensor, times: Optional[torch.Tensor] = None, *, c0: Optional[torch.Tensor] = None,
               k0: int = 0) -> torch.Tensor:
        """Coefficients after every sample: ``u`` (L,) or (batch, L) -> (L, N) or (batch, L, N).

        To continue a uniformly sampled stream block by block, pass the last coefficients
        ``c0`` ((N,) or (batch, N)) and the index ``k0`` of the block's first sample.

        ``times`` (L,), strictly increasing, gives the sample times of an irregularly sampled
        signal (shared across the batch). LegS only uses ratios of times, so encoding
        ``u(αt)`` on times ``αt`` gives the same coefficients; the history is taken to start
        one step before the first sample, as for uniform steps.
        """
        self._check_u(u)
        squeeze = u.dim() == 1
        U = u.reshape(-1, u.shape[-1]).to(torch.float64)
        L = U.shape[1]
        if times is not None:
            times = self._check_times(times, L)
        k0 = check_int("k0", k0, minimum=0)
        if times is not None and (c0 is not None or k0):
            raise ValueError("c0/k0 continue a uniformly sampled stream; they cannot be combined with times")
        if c0 is None:
            if k0:
                raise ValueError("k0 > 0 needs the coefficients c0 reached before sample k0")
            c0 = torch.zeros(U.shape[0], self.N, dtype=torch.float64)
        else:
            check_tensor("c0", c0, floating=True)
            if c0.shape[-1] != self.N or c0.numel() != U.shape[0] * self.N:
                raise ValueError(f"c0 must have shape ({self.N},) or ({U.shape[0]}, {self.N}), got {tuple(c0.shape)}")
            c0 = c0.reshape(U.shape[0], self.N).to(torch.float64)
        if U.shape[0] == 0:  # an empty batch: no coefficients to compute
            C = U.new_zeros(0, L, self.N).to(u.dtype)
            return C[0] if squeeze else C
        if self.measure == "legs":
            if times is None:
                k = torch.arange(k0, k0 + L, dtype=torch.float64)
                lam_l, lam_r = 1 / (2 * k.clamp(min=1)), 1 / (2 * (k + 1))
            else:
                lam_l, lam_r = self._legs_lambdas(self._legs_times(times, L))
            skip = 1 if k0 == 0 else 0
            if skip:  # the first sample alone: its best constant approximation, c = u_0 e_0
                c0 = U[:, :1] * torch.eye(self.N, dtype=torch.float64)[0]
            C = legs_scan(U[:, skip:], lam_l[skip:], lam_r[skip:], c0)
            if skip:
                C = torch.cat([c0[:, None], C], dim=1)
        else:
            C = self._lti_scan(U, times, c0)
        C = C.to(u.dtype)
        return C[0] if squeeze else C

    @staticmethod
    def _legs_times(times: Optional[torch.Tensor], L: int) -> torch.Tensor:
        if times is None:
            return torch.arange(1, L + 1, dtype=torch.float64)
        first_step = times[1] - times[0] if L > 1 else torch.ones((), dtype=torch.float64)
        return times - (times[0] - first_step)

    @staticmethod
    def _legs_lambdas(t: torch.Tensor):
        # Step into sample k (k >= 1): λ_l = Δ/(2 t_{k-1}), λ_r = Δ/(2 t_k). Entry 0 is unused.
        dlt = torch.diff(t, prepend=torch.zeros(1, dtype=t.dtype))
        prev = torch.cat([t[:1], t[:-1]])
        return dlt / (2 * prev), dlt / (2 * t)

    def _lti_scan(self, U: torch.Tensor, times: Optional[torch.Tensor], c0: torch.Tensor) -> torch.Tensor:
        if U.requires_grad or c0.requires_grad or U.device.type != "cpu":
            return self._lti_scan_torch(U, times, c0)
        batch, L = U.shape
        out = np.empty((L, batch, self.N))
        c = c0.numpy().copy()
        Un = U.numpy()
        if times is None:
            AdT, Bd = self.Ad.numpy().T.copy(), self.Bd.numpy()
            for k in range(L):
                c = c @ AdT + Un[:, k, None] * Bd
                out[k] = c
        else:
            dts = torch.diff(times, prepend=(times[:1] - (times[1] - times[0])) if L > 1 else times[:1] - self.dt)
            for start in range(0, L, 512):  # discretize in blocks: (block, N, N) at a time
                Ad, Bd = discretize(self.A, self.B, dts[start:start + 512], self.method)
                AdT, Bd = Ad.transpose(-1, -2).numpy(), Bd.numpy()
                for j in range(AdT.shape[0]):
                    c = c @ AdT[j] + Un[:, start + j, None] * Bd[j]
                    out[start + j] = c
        return torch.from_numpy(out.transpose(1, 0, 2).copy())

    def _lti_scan_torch(self, U: torch.Tensor, times: Optional[torch.Tensor], c0: torch.Tensor) -> torch.Tensor:
        """The same scan in torch (differentiable, any device): one O(N²) step per sample."""
        L = U.shape[1]
        if times is None:
            Ads = self.Ad.to(U).expand(L, -1, -1)
            Bds = self.Bd.to(U).expand(L, -1)
        else:
            dts = torch.diff(times, prepend=(times[:1] - (times[1] - times[0])) if L > 1 else times[:1] - self.dt)
            Ads, Bds = discretize(self.A, self.B, dts, self.method)
            Ads, Bds = Ads.to(U), Bds.to(U)
        c, out = c0.to(U), []
        for k in range(L):
            c = c @ Ads[k].T + U[:, k, None] * Bds[k]
            out.append(c)
        return torch.stack(out, dim=1)

    # ------------------------------------------------------------------ streaming
    def initial_state(self, batch_size: Optional[int] = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Zero coefficients, (N,) or (batch_size, N)."""
        if batch_size is not None:
            check_int("batch_size", batch_size, minimum=0)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:  # a dtype, not a tensor: no _checks helper
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        shape = (self.N,) if batch_size is None else (batch_size, self.N)
        return torch.zeros(shape, dtype=dtype)

    def step(self, c: torch.Tensor, u_t, k: Optional[int] = None, *, t: Optional[float] = None,
             t_prev: Optional[float] = None) -> torch.Tensor:
        """Advance the memory by one sample in O(N) (LegS) or O(N²) (translated measures).

        ``c``: (..., N) coefficients before the sample; ``u_t``: a number or a tensor of shape
        ``c.shape[:-1]``. Uniform steps: pass the 0-based index ``k`` of ``u_t`` (LegS needs it;
        the translated measures ignore it). Irregular steps: pass the sample time ``t`` and the
        previous one ``t_prev`` (for LegS measured from the start of the history, so ``t > t_prev > 0``).
        """
        check_tensor("c", c, floating=True)
        if c.shape[-1] != self.N:
            raise ValueError(f"c must have shape (..., {self.N}), got {tuple(c.shape)}")
        if not isinstance(u_t, torch.Tensor):  # a real number (not a bool, a string or a list)
            u_t = torch.tensor(check_float("u_t", u_t), dtype=c.dtype, device=c.device)
        elif u_t.is_complex():
            raise TypeError(f"u_t must be real, got dtype {u_t.dtype}")
        else:
            u_t = u_t.to(c)
        check_finite("u_t", u_t)
        if u_t.shape != c.shape[:-1]:
            try:
                u_t = u_t.expand(c.shape[:-1])
            except RuntimeError:
                raise ValueError(f"u_t must be a number or have shape {tuple(c.shape[:-1])}, got {tuple(u_t.shape)}") from None
        # every scalar is checked before the empty-batch shortcut: an empty batch accepts no more
        irregular = t is not None or t_prev is not None
        if irregular:
            if t is None or t_prev is None:
                raise ValueError("irregular steps need both t and t_prev")
            t, t_prev = check_float("t", t), check_float("t_prev", t_prev)
            check_positive("t - t_prev", t - t_prev)
            if self.measure == "legs":
                check_positive("t_prev", t_prev)
        elif self.measure == "legs":
            if k is None:
                raise ValueError("LegS needs the 0-based sample index k (or t and t_prev)")
            k = check_int("k", k, minimum=0)
        if c.numel() == 0:  # an empty batch
            return c.clone()
        if self.measure == "legs":
            if irregular:
                dlt = t - t_prev
                return legs_step(c, u_t, dlt / (2 * t_prev), dlt / (2 * t))
            if k == 0:
                return u_t[..., None] * torch.eye(self.N, dtype=c.dtype, device=c.device)[0]
            return legs_step(c, u_t, 1 / (2 * k), 1 / (2 * (k + 1)))
        if irregular:
            Ad, Bd = discretize(self.A, self.B, t - t_prev, self.method)
        else:
            Ad, Bd = self.Ad, self.Bd
        Ad, Bd = Ad.to(c), Bd.to(c)
        return c @ Ad.T + u_t[..., None] * Bd

    # ------------------------------------------------------------------ reconstruction
    def reconstruct(self, c: torch.Tensor, num_points: int = 1000, s: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The history approximated by coefficients ``c`` (..., N) -> (..., num_points).

        Evaluated at the midpoints ``s_j = (j + 1/2)/num_points`` of the window (oldest first),
        or at the given relative positions ``s`` in [0, 1]. The window is the whole history for
        LegS and the last ``theta`` time units for the translated measures.
        """
        check_tensor("c", c, floating=True)
        if c.shape[-1] != self.N:
            raise ValueError(f"c must have shape (..., {self.N}), got {tuple(c.shape)}")
        # half precision (float16/bfloat16) is evaluated in float32 and rounded once at the end:
        # the positions, the basis values and the sum over N terms would otherwise each lose ~3 digits
        work = torch.promote_types(c.dtype, torch.float32)
        if s is None:
            check_positive_int("num_points", num_points)
            s = (torch.arange(num_points, dtype=work, device=c.device) + 0.5) / num_points
        else:
            check_tensor("s", s, ndim=1, floating=True)
        G = basis(self.measure, self.N, s.to(work), theta=self.theta)  # (P, N)
        return (c.to(work) @ G.T).to(c.dtype)
