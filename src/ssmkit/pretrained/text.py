"""Text in and out of a language model: encode a batch of prompts (left-padded, with a mask),
decode recurrently, and yield the text as it is produced."""
from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple

import torch

from ..models import LanguageModel

__all__ = ["pad_left", "stream_text"]


def pad_left(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists of different lengths -> ``(ids, mask)`` (B, P), left-padded with
    ``pad_id``; ``mask`` is True at real tokens."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("prompts must be a non-empty list of non-empty token sequences")
    P = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), P), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), P, dtype=torch.bool)
    for i, s in enumerate(sequences):
        ids[i, P - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, P - len(s):] = True
    return ids, mask


def stream_text(model: LanguageModel, tokenizer, prompts: List[str], max_new_tokens: int, temperature: float = 0.0,
                top_k: Optional[int] = None, top_p: Optional[float] = None, generator: Optional[torch.Generator] = None,
                eos_token_id: Optional[int] = None) -> Iterator[Tuple[int, str]]:
    """Yield ``(row, text)`` pieces as tokens are decoded: the new text of prompt ``row`` since
    the last piece (a piece appears once the bytes decode to whole characters; the prompt and
    its continuation are decoded together, so the spacing is the tokenizer's). A row stops at
    ``eos_token_id``; decoding stops when every row has."""
    encoded = [tokenizer.encode(p).ids for p in prompts]
    if any(len(e) == 0 for e in encoded):
        raise ValueError("prompt encodes to no tokens; give some text")
    ids, mask = pad_left(encoded)
    new: List[List[int]] = [list(e) for e in encoded]  # prompt + new tokens, decoded together
    shown = [tokenizer.decode(e) for e in encoded]  # (spacing between tokens is the decoder's)
    done = [False] * len(prompts)
    for tok in model.generate_stream(ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                     generator=generator, mask=mask):
        for i, t in enumerate(tok.tolist()):
            if done[i]:
                continue
            if eos_token_id is not None and t == eos_token_id:
                done[i] = True
                continue
            new[i].append(t)
            text = tokenizer.decode(new[i])
            if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for more tokens
                continue
            if len(text) > len(shown[i]) and text.startswith(shown[i]):
                yield i, text[len(shown[i]):]
                shown[i] = text
        if all(done):
            break
