"""Task heads on the backbone: sequence classification/regression and language modelling."""
from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import nn

from .._checks import check_bool, check_choice, check_float, check_int, check_mask, check_positive_int, trusted_inputs
from ..layers.mamba_family import rows_linear
from ..ops.cpu_half import module_linear
from .backbone import Backbone

__all__ = ["SequenceClassifier", "TokenModel", "LanguageModel"]


def _check_backbone(backbone) -> None:
    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone must be an ssmkit Backbone, got {type(backbone).__name__}")


class SequenceClassifier(nn.Module):
    """One output per sequence: pooled backbone features -> linear (``num_classes`` logits, or 1
    value for regression). ``pooling``: ``mean`` over real tokens or ``last`` real token."""

    def __init__(self, backbone: Backbone, num_classes: int, pooling: str = "mean", device=None, dtype=None):
        super().__init__()
        _check_backbone(backbone)
        check_positive_int("num_classes", num_classes)
        check_choice("pooling", pooling, ("mean", "last"))
        self.backbone, self.pooling = backbone, pooling
        self.head = nn.Linear(backbone.d_model, num_classes, device=device, dtype=dtype)

    def forward(self, x, mask=None):
        h = self.backbone(x, mask=mask)
        mask = check_mask(mask, h)
        if mask is None:
            pooled = h.mean(1) if self.pooling == "mean" else h[:, -1]
        else:
            m = mask.to(h.dtype)[..., None]
            if self.pooling == "mean":
                pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
            else:  # the last real token: the last True position (right or left padding)
                pos = torch.arange(mask.shape[1], device=mask.device)
                last = torch.where(mask, pos, torch.zeros_like(pos)).max(1).values
                pooled = h[torch.arange(h.shape[0], device=h.device), last]
        return self.head(pooled.to(self.head.weight.dtype))


class TokenModel(nn.Module):
    """One output per position (logits over ``num_classes``), with recurrent decoding.

    ``num_classes`` defaults to the backbone's (padded) vocabulary; ``tie_embeddings`` shares the
    head's weight with the input embedding; ``head_bias`` adds a bias to the head."""

    def __init__(self, backbone: Backbone, num_classes: Optional[int] = None, *, tie_embeddings: bool = False,
                 head_bias: bool = True, device=None, dtype=None):
        super().__init__()
        _check_backbone(backbone)
        check_bool("tie_embeddings", tie_embeddings)
        check_bool("head_bias", head_bias)
        if num_classes is None:
            if backbone.padded_vocab_size is None:
                raise ValueError("num_classes must be given for a backbone without a vocabulary (d_input)")
            num_classes = backbone.padded_vocab_size
        check_positive_int("num_classes", num_classes)
        if tie_embeddings:
            if backbone.padded_vocab_size is None:
                raise ValueError("tie_embeddings needs a backbone with a vocabulary (vocab_size)")
            if num_classes != backbone.padded_vocab_size:
                raise ValueError(f"num_classes must equal the embedding's vocabulary ({backbone.padded_vocab_size}) "
                                 f"with tie_embeddings, got {num_classes}")
        self.backbone = backbone
        self.num_classes, self.tie_embeddings = num_classes, tie_embeddings
        self.head = nn.Linear(backbone.d_model, num_classes, bias=head_bias, device=device, dtype=dtype)
        if tie_embeddings:
            self.head.weight = backbone.encoder.weight

    def _logits(self, h):
        return module_linear(self.head, h.to(self.head.weight.dtype))

    def forward(self, x, mask=None, states=None, return_state=False):
        out = self.backbone(x, mask=mask, states=states, return_state=return_state)
        if return_state:
            h, s = out
            return self._logits(h), s
        return self._logits(out)

    def step(self, x_t, states):
        h, states = self.backbone.step(x_t, states)
        return rows_linear(self.head, h.to(self.head.weight.dtype)), states


class LanguageModel(TokenModel):
    """Next-token model with ``generate``: the prompt runs once in parallel (``forward`` returning
    the states), then each new token is one recurrent ``step`` — O(1) time and memory per token,
    no recomputation of the prefix.

    A batch of prompts of different lengths is given padded, with its ``mask`` (left or right
    padding): each sequence continues from its own last real token and its own state."""

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, top_p: Optional[float] = None,
                 mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``prompt`` (B, P) token ids -> (B, P + max_new_tokens). ``temperature=0`` is greedy.

        With ``mask`` (B, P) (True at real tokens), the new tokens of row b follow its last real
        prompt token; the returned prompt part is ``prompt`` unchanged."""
        new = list(self.generate_stream(prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                        generator=generator, mask=mask))
        return torch.cat([prompt] + [t[:, None] for t in new], dim=1)

    @torch.no_grad()
    def generate_stream(self, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                        top_k: Optional[int] = None, top_p: Optional[float] = None,
                        generator: Optional[torch.Generator] = None,
                        mask: Optional[torch.Tensor] = None) -> Iterator[torch.Tensor]:
        """Yield the new tokens one position at a time, each a (B,) tensor (see ``generate``)."""
        if not isinstance(prompt, torch.Tensor) or prompt.dim() != 2 or prompt.shape[1] < 1:
            raise ValueError(f"prompt must be a (batch, length >= 1) tensor of token ids, got "
                             f"{tuple(prompt.shape) if isinstance(prompt, torch.Tensor) else type(prompt).__name__}")
        check_int("max_new_tokens", max_new_tokens, minimum=0)
        check_float("temperature", temperature, low=0.0)  # 0: greedy
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
        if top_p is not None:
            check_float("top_p", top_p, low=0.0, high=1.0, low_open=True)
        if prompt.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"prompt must hold token ids (int64), got {prompt.dtype}")
        self.backbone._check_tokens(prompt, "prompt")  # the range, named as the caller knows it
        mask = check_mask(mask, prompt)
        if mask is not None and prompt.shape[0] and not bool(mask.any(1).all()):
            raise ValueError("mask must have at least one real token in every row")
        logits, states = self.forward(prompt, mask=mask, return_state=True)
        if mask is None:
            last = logits[:, -1]
        else:  # each row's last real token (right or left padding)
            pos = torch.arange(mask.shape[1], device=mask.device)
            idx = torch.where(mask, pos, torch.zeros_like(pos)).max(1).values
            last = logits[torch.arange(logits.shape[0], device=logits.device), idx]
        with trusted_inputs():
            # the loop owns its states (contiguous copies, so they can be updated in place)
            states = [_owned(s) for s in states]
            bb, head = self.backbone, self.head
            for i in range(max_new_tokens):
                nxt = self._sample(last, temperature, top_k, generator, top_p)
                yield nxt
                if i + 1 < max_new_tokens:
                    last = rows_linear(head, bb.step_(nxt, states).to(head.weight.dtype))

    @staticmethod
    def _sample(logits, temperature, top_k, generator, top_p=None):
        if temperature == 0:  # half precision: the same maximum, found 3x faster in float32 on the CPU
            return (logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits).argmax(-1)
        logits = logits.float() / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p is not None and top_p < 1.0:
            # nucleus: keep the smallest set of most likely tokens whose probability reaches top_p
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            cum = torch.softmax(sorted_logits, -1).cumsum(-1)
            drop = (cum - torch.softmax(sorted_logits, -1)) >= top_p  # mass before this token already >= top_p
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        probs = torch.softmax(logits, -1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _owned(state):
    """A contiguous copy of one layer's state (a tensor or a tuple of tensors)."""
    if isinstance(state, torch.Tensor):
        return state.clone(memory_format=torch.contiguous_format)
    if isinstance(state, (tuple, list)):
        return type(state)(_owned(s) for s in state)
    return state
