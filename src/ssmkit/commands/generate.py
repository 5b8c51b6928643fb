"""``ssmkit generate``: continue a prompt with a trained token model, decoding recurrently."""
from __future__ import annotations

import torch

from ..models import LanguageModel
from ..train import load_model


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate tokens from a checkpoint", description=__doc__)
    p.add_argument("checkpoint", help="run folder of a token task (e.g. induction_heads, copying)")
    p.add_argument("--prompt", required=True, help="token ids separated by spaces or commas, e.g. '3 5 1 7'")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    model, config, task = load_model(args.checkpoint)
    if not isinstance(model, LanguageModel):
        raise ValueError(f"checkpoint was trained on {config.task!r}, a {task.kind} task: generate needs a token task")
    try:
        ids = [int(t) for t in args.prompt.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"--prompt must be integer token ids, got {args.prompt!r}") from None
    if not ids:
        raise ValueError("--prompt is empty")
    bad = [i for i in ids if not 0 <= i < task.vocab_size]
    if bad:
        raise ValueError(f"--prompt token ids must be in [0, {task.vocab_size}), got {bad}")
    g = torch.Generator().manual_seed(args.seed)
    out = model.generate(torch.tensor([ids]), args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, generator=g)
    print(" ".join(str(t) for t in out[0].tolist()))
    return 0
