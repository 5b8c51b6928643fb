"""RTF: the rational-transfer-function layer (Parnichkun et al. 2024, "State-Free Inference of
State-Space Models: The Transfer Function Approach"; docs/math.md §8).

Per channel, the kernel's truncated generating function is ``b(z)/a(z)`` with
``a(z) = 1 + a_1 z + … + a_N z^N`` and ``b(z) = b_1 + … + b_N z^{N-1}``, parameterised directly:

- ``kernel(L) = irfft(rfft(b) / rfft([1, a]))`` — O(L log L), independent of N;
- ``step``: the companion realisation (first row ``-a``, subdiagonal ones, ``B̄ = e_1``,
  ``C = b (I - Ā^{l_max})^{-1}``): a shift plus one dot product, O(N) per token.

``b`` encodes ``C̃ = C (I - Ā^{l_max})``, so the layer's kernel is exact for lengths up to
``l_max``; longer inputs use the companion system's own impulse response (still exact).
``a = 0`` (the ``zeros`` init) is an FIR filter over the last N inputs. The ``montel`` init
draws ``a`` with ``Σ|a_i| = 1/2``; ``Σ|a_i| < 1`` keeps all poles inside the unit disk
(a Montel-type root bound), and ``constraint="l1"`` enforces it during training by rescaling.
"""
from __future__ import annotations

import torch

from .._checks import check_positive, check_choice, check_positive_int
from ..kernels.rational import rational_kernel
from ..kernels.transfer import companion, ss_to_tf, tf_to_ss
from .base import register_layer, set_optim_hints
from .lti_base import LTILayer

__all__ = ["RTF"]

INITS = ("zeros", "montel")
CONSTRAINTS = ("none", "l1")


@register_layer("rtf")
class RTF(LTILayer):
    """Rational transfer function SSM over (batch, length, d_model).

    Args:
        d_model: channels H.  d_state: order N of the transfer function.
        l_max: the length whose truncated generating function ``b`` encodes (training length).
        init: ``zeros`` (``a = 0``) | ``montel`` (random ``a`` with ``Σ|a| = 1/2``).
        constraint: ``none`` | ``l1`` (rescale ``a`` so that ``Σ|a| ≤ 1 - 1e-3``).
        ssm_lr: learning-rate hint for ``a`` and ``b`` (no weight decay).
    """

    complex_state = False

    def __init__(self, d_model: int, d_state: int = 64, l_max: int = 1024, init: str = "zeros",
                 constraint: str = "none", ssm_lr: float = 1e-3, bidirectional: bool = False, device=None, dtype=None):
        super().__init__(d_model, bidirectional, device, dtype)
        check_positive_int("d_state", d_state)
        check_positive("ssm_lr", ssm_lr)
        check_positive_int("l_max", l_max)
        check_choice("init", init, INITS)
        check_choice("constraint", constraint, CONSTRAINTS)
        self.d_state, self.l_max, self.init, self.constraint = d_state, l_max, init, constraint
        H, N = self.n_kernels, d_state
        if init == "zeros":
            a = torch.zeros(H, N)
        else:
            a = torch.randn(H, N)
            a = 0.5 * a / a.abs().sum(-1, keepdim=True)
        self.a = self._parameter(a)
        self.b = self._parameter(torch.randn(H, N) / N**0.5)
        for p in (self.a, self.b):
            set_optim_hints(p, lr=ssm_lr, weight_decay=0.0)

    @property
    def state_width(self) -> int:
        return self.d_state

    def _dense_AB(self):
        a = self.denominator()
        Bd = torch.zeros_like(a)
        Bd[..., 0] = 1
        return companion(a), Bd

    def denominator(self) -> torch.Tensor:
        """The effective ``a`` (H, N), after the optional l1 constraint."""
        if self.constraint == "none":
            return self.a
        norm = self.a.abs().sum(-1, keepdim=True)
        return self.a * torch.clamp((1 - 1e-3) / norm.clamp(min=1e-12), max=1.0)

    def _companion_C(self) -> torch.Tensor:
        """``C = b (I - Ā^{l_max})^{-1}`` (H, N), cached while no gradient is recorded."""
        def compute():
            _, _, C = tf_to_ss(self.denominator(), self.b, self.l_max)
            if not bool(torch.isfinite(C).all()):
                raise ValueError("RTF denominator a has roots on or outside the unit circle: the recurrence is "
                                 "unstable (train with constraint='l1' to keep it stable)")
            return C
        return self._cached("companion_C", compute, (self.a, self.b))

    def kernel(self, L: int) -> torch.Tensor:
        """The (d_model, L) real kernel; cost independent of d_state for L <= l_max."""
        self._check_L(L)
        a = self.denominator()
        if L <= self.l_max:
            return rational_kernel(a, self.b, self.l_max)[:, :L]
        # Beyond l_max: the companion system's own response, via its length-L numerator.
        C = self._companion_C()
        Ad = companion(a)
        I = torch.eye(self.d_state, dtype=a.dtype, device=a.device)
        bL = (C.unsqueeze(-2) @ (I - torch.linalg.matrix_power(Ad, L))).squeeze(-2)
        return rational_kernel(a, bL, L)

    def discrete_ssm(self):
        """Dense companion ``(Ad, Bd, C, D)``: (H,N,N), (H,N), (H,N), (H,)."""
        Ad, Bd, _ = tf_to_ss(self.denominator(), self.b, self.l_max)
        return Ad, Bd, self._companion_C(), self.D

    # ---- recurrence ---------------------------------------------------------------------
    def _advance(self, state, u_t):
        # x_k = Ā x_{k-1} + e_1 u_k: new first entry u_k - a·x, the rest shifts down by one.
        first = u_t - (self.denominator() * state).sum(-1)
        return torch.cat([first.unsqueeze(-1), state[..., :-1]], dim=-1)

    def _readout(self, state):
        return (self._companion_C() * state).sum(-1)

    # ---- conversion ---------------------------------------------------------------------
    @classmethod
    def from_layer(cls, layer: LTILayer, l_max: int) -> "RTF":
        """An RTF layer with the same kernel (for lengths <= l_max) and recurrence outputs as any
        LTI layer exposing ``discrete_ssm()`` (S4, S4D, RTF). Converted in float64."""
        check_positive_int("l_max", l_max)
        if not isinstance(layer, LTILayer):
            raise TypeError(f"layer must be an LTI layer (S4, S4D, RTF), got {type(layer).__name__}")
        layer._refuse_bidirectional("from_layer")
        with torch.no_grad():
            Ad, Bd, C, D = layer.discrete_ssm()
            a, b = ss_to_tf(Ad.to(torch.complex128), Bd.to(torch.complex128), C.to(torch.complex128), l_max)
            H, N = a.shape
            out = cls(H, N, l_max=l_max, device=layer.D.device, dtype=layer.D.dtype)
            out.a.copy_(a)
            out.b.copy_(b)
            out.D.copy_(D)
        return out
