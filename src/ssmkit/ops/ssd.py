"""State-space duality (SSD): the Mamba-2 scan with a scalar decay per head (Dao & Gu 2024,
"Transformers are SSMs", §6-7).

Per head, with input ``x_t`` (P,), ``B_t, C_t`` (N,), step ``Δ_t`` and scalar ``A < 0``:

    h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_tᵀ        h: (P, N)
    y_t = h_t C_t

Chunked computation (chunk Q): inside a chunk, with ``S_t = Σ_{s≤t} Δ_s A`` (log decays, so
every factor ``exp(S_t - S_s) ≤ 1`` and nothing overflows), the outputs are the masked matrix
product ``y = ((C Bᵀ) ⊙ exp(S_t - S_s)[s ≤ t]) (Δ x)``; the chunk's final state
``Σ_s exp(S_Q - S_s) Δ_s x_s B_sᵀ`` is carried across chunks by a short recurrence, whose
contribution to the outputs is ``exp(S_t) h_prev C_t``. ``ssd_ref`` is the step-by-step loop.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["ssd", "ssd_ref"]


def _check(x, dt, A, B, C, h0):
    if x.dim() != 4:
        raise ValueError(f"x must have shape (batch, length, heads, headdim), got {tuple(x.shape)}")
    b, L, H, P = x.shape
    if dt.shape != (b, L, H):
        raise ValueError(f"dt must have shape ({b}, {L}, {H}), got {tuple(dt.shape)}")
    if A.shape != (H,):
        raise ValueError(f"A must have shape ({H},), got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (b, L) or H % B.shape[2] or C.shape != B.shape:
        raise ValueError(f"B and C must have shape ({b}, {L}, groups, N) with groups dividing {H}, got "
                         f"{tuple(B.shape)} and {tuple(C.shape)}")
    if h0 is not None and h0.shape != (b, H, P, B.shape[3]):
        raise ValueError(f"initial_state must have shape ({b}, {H}, {P}, {B.shape[3]}), got {tuple(h0.shape)}")


def _heads(M: torch.Tensor, H: int) -> torch.Tensor:
    """(b, L, G, N) -> (b, L, H, N): head h reads group h // (H/G)."""
    G = M.shape[2]
    return M.repeat_interleave(H // G, dim=2) if G != H else M


def ssd_ref(x, dt, A, B, C, initial_state: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference loop: ``x`` (b, L, H, P), ``dt`` (b, L, H) (after softplus), ``A`` (H,),
    ``B, C`` (b, L, G, N) -> ``y`` (b, L, H, P), final state (b, H, P, N)."""
    _check(x, dt, A, B, C, initial_state)
    b, L, H, P = x.shape
    Bh, Ch = _heads(B, H), _heads(C, H)
    h = x.new_zeros(b, H, P, B.shape[3]) if initial_state is None else initial_state
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t] * A)[..., None, None]  # (b, H, 1, 1)
        h = decay * h + (dt[:, t, :, None] * x[:, t]).unsqueeze(-1) * Bh[:, t].unsqueeze(2)
        ys.append(torch.einsum("bhpn,bhn->bhp", h, Ch[:, t]))
    return torch.stack(ys, 1), h


def ssd(x, dt, A, B, C, initial_state: Optional[torch.Tensor] = None, chunk: int = 64) -> Tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD (see the module docstring); same arguments and results as :func:`ssd_ref`."""
    _check(x, dt, A, B, C, initial_state)
    b, L, H, P = x.shape
    N = B.shape[3]
    Q = min(chunk, L)
    pad = (-L) % Q
    if pad:  # zero steps at the end: Δ = 0 leaves the state unchanged
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
        dt = torch.nn.functional.pad(dt, (0, 0, 0, pad))
        B = torch.nn.functional.pad(B, (0, 0, 0, 0, 0, pad))
        C = torch.nn.functional.pad(C, (0, 0, 0, 0, 0, pad))
    T = x.shape[1]
    nc = T // Q
    Bh, Ch = _heads(B, H), _heads(C, H)
    xc = x.reshape(b, nc, Q, H, P)
    dtc = dt.reshape(b, nc, Q, H)
    Bc = Bh.reshape(b, nc, Q, H, N)
    Cc = Ch.reshape(b, nc, Q, H, N)
    a = dtc * A  # (b, nc, Q, H), <= 0
    S = torch.cumsum(a, dim=2)  # within-chunk log decay
    # intra-chunk: L[t, s] = exp(S_t - S_s) for s <= t
    diff = S.unsqueeze(3) - S.unsqueeze(2)  # (b, nc, Q(t), Q(s), H)
    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    Lmat = torch.exp(diff.masked_fill(~causal[None, None, :, :, None], float("-inf")))
    dx = dtc.unsqueeze(-1) * xc  # (b, nc, Q, H, P)
    CB = torch.einsum("bcthn,bcshn->bctsh", Cc, Bc)
    y = torch.einsum("bctsh,bcshp->bcthp", CB * Lmat, dx)
    # chunk states and the recurrence across chunks
    decay_to_end = torch.exp(S[:, :, -1:, :] - S)  # (b, nc, Q, H)
    states = torch.einsum("bcshp,bcshn->bchpn", decay_to_end.unsqueeze(-1) * dx, Bc)  # (b, nc, H, P, N)
    chunk_decay = torch.exp(S[:, :, -1, :])  # (b, nc, H)
    h = x.new_zeros(b, H, P, N) if initial_state is None else initial_state
    prev = []
    for c in range(nc):
        prev.append(h)
        h = chunk_decay[:, c, :, None, None] * h + states[:, c]
    H_prev = torch.stack(prev, dim=1)  # (b, nc, H, P, N)
    y = y + torch.exp(S).unsqueeze(-1) * torch.einsum("bcthn,bchpn->bcthp", Cc, H_prev)
    y = y.reshape(b, T, H, P)[:, :L]
    return y, h
