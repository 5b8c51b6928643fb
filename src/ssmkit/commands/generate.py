"""``ssmkit generate``: continue a prompt, decoding recurrently.

- ``ssmkit generate RUN --prompt "3 5 1 7"``: a run trained by ssmkit on a token task (token ids);
- ``ssmkit generate --model DIR --prompt "text"``: a released Mamba / Mamba-2 checkpoint folder
  (transformers or mamba_ssm layout); text in and out through the folder's tokenizer.json, the
  new text streamed as it is decoded. ``--prompt`` may be repeated: the prompts decode as one
  batch (left-padded), each from its own state.
"""
from __future__ import annotations

import sys

import torch

from ..models import LanguageModel


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate tokens from a trained run or a pretrained model folder",
                       description=__doc__)
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="run folder of a token task (e.g. induction_heads, copying)")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="a local Mamba / Mamba-2 checkpoint folder (transformers or mamba_ssm layout)")
    p.add_argument("--prompt", required=True, action="append",
                   help="text (--model with tokenizer.json) or token ids separated by spaces or commas; "
                        "repeat for a batch of prompts (--model)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep tokens up to this probability mass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="--model: weights' dtype for inference (state and scan stay float32)")
    p.add_argument("--no-stop", action="store_true", help="--model: do not stop at the end-of-text token")


def _token_ids(text: str, vocab: int):
    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"--prompt must be integer token ids, got {text!r}") from None
    if not ids:
        raise ValueError("--prompt is empty")
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise ValueError(f"--prompt token ids must be in [0, {vocab}), got {bad}")
    return ids


def run(args) -> int:
    if (args.checkpoint is None) == (args.model is None):
        raise ValueError("give either a run folder (ssmkit generate RUN) or --model DIR, not both or neither")
    g = torch.Generator().manual_seed(args.seed)
    if args.model is not None:
        return _run_pretrained(args, g)
    from ..train import load_model

    model, config, task = load_model(args.checkpoint)
    if not isinstance(model, LanguageModel):
        raise ValueError(f"checkpoint was trained on {config.task!r}, a {task.kind} task: generate needs a token task")
    if len(args.prompt) != 1:
        raise ValueError("--prompt may be given once for a run folder")
    ids = _token_ids(args.prompt[0], task.vocab_size)
    out = model.generate(torch.tensor([ids]), args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, generator=g)
    print(" ".join(str(t) for t in out[0].tolist()))
    return 0


def _run_pretrained(args, g) -> int:
    from ..pretrained import load_pretrained
    from ..pretrained.text import pad_left, stream_text

    model, tokenizer = load_pretrained(args.model, dtype=args.dtype)
    sample = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, generator=g)
    if tokenizer is None:  # no tokenizer.json: token ids in and out
        ids, mask = pad_left([_token_ids(p, model.backbone.padded_vocab_size) for p in args.prompt])
        out = model.generate(ids, args.max_new_tokens, mask=mask, **sample)
        for row, m in zip(out, torch.cat([mask, torch.ones(len(ids), args.max_new_tokens, dtype=torch.bool)], 1)):
            print(" ".join(str(t) for t in row[m].tolist()))
        return 0
    eos = None if args.no_stop else getattr(getattr(model, "spec", None), "eos_token_id", None)
    pieces = stream_text(model, tokenizer, args.prompt, args.max_new_tokens, eos_token_id=eos, **sample)
    if len(args.prompt) == 1:  # stream the continuation as it is decoded
        sys.stdout.write(args.prompt[0])
        sys.stdout.flush()
        for _, piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    texts = list(args.prompt)
    for i, piece in pieces:
        texts[i] += piece
    for i, t in enumerate(texts):
        print(f"[{i}] {t}")
    return 0
