"""ListOps (Nangia & Bowman 2018), generated like the Long Range Arena's (Tay et al. 2021).

Nested prefix expressions over digits 0-9 with the operators MAX, MIN, MED (median: the
middle element of the sorted arguments, the upper one for an even count) and SM (sum modulo
10), e.g. ``[MAX 2 9 [MIN 4 7 ] 0 ]`` = 9; the label is the value (10 classes). Tokens:
0 padding, digits 1-10, ``[MAX [MIN [MED [SM`` 11-14, ``]`` 15.
"""
from __future__ import annotations

import random
from typing import List

import torch

from .._checks import check_int
from .base import Task, TensorDataset
from .registry import register_task

__all__ = ["listops", "evaluate_listops", "detokenize", "OPS"]

OPS = ("MAX", "MIN", "MED", "SM")
_OP_TOKEN = {op: 11 + i for i, op in enumerate(OPS)}
CLOSE = 15
VOCAB = 16


def _apply(op: str, args: List[int]) -> int:
    if op == "MAX":
        return max(args)
    if op == "MIN":
        return min(args)
    if op == "MED":
        return sorted(args)[len(args) // 2]
    return sum(args) % 10


def _tree(rng: random.Random, depth: int, max_depth: int, max_args: int, p_branch: float):
    """Return (tokens, value), generated top-down with the value computed alongside."""
    op = rng.choice(OPS)
    n_args = rng.randint(2, max_args)
    tokens, values = [_OP_TOKEN[op]], []
    for _ in range(n_args):
        if depth < max_depth and rng.random() < p_branch:
            t, v = _tree(rng, depth + 1, max_depth, max_args, p_branch)
        else:
            v = rng.randint(0, 9)
            t = [v + 1]
        tokens += t
        values.append(v)
    tokens.append(CLOSE)
    return tokens, _apply(op, values)


def evaluate_listops(tokens) -> int:
    """An independent evaluator: a stack machine over the token sequence (padding ignored)."""
    stack: List[list] = []
    result = None
    for t in (int(t) for t in tokens):
        if t == 0:
            continue
        if 11 <= t <= 14:
            stack.append([OPS[t - 11]])
        elif 1 <= t <= 10:
            if not stack:
                raise ValueError("digit outside an expression")
            stack[-1].append(t - 1)
        elif t == CLOSE:
            op, *args = stack.pop()
            v = _apply(op, args)
            if stack:
                stack[-1].append(v)
            else:
                result = v
        else:
            raise ValueError(f"unknown ListOps token {t}")
    if stack or result is None:
        raise ValueError("unbalanced ListOps expression")
    return result


def detokenize(tokens) -> str:
    words = []
    for t in (int(t) for t in tokens):
        if t == 0:
            continue
        words.append(str(t - 1) if t <= 10 else ("[" + OPS[t - 11] if t <= 14 else "]"))
    return " ".join(words)


def _make(n: int, seed: int, min_len: int, max_len: int, max_depth: int, max_args: int):
    rng = random.Random(seed)
    xs, ys = [], []
    while len(xs) < n:
        toks, v = _tree(rng, 1, max_depth, max_args, p_branch=0.25)
        if min_len <= len(toks) <= max_len:
            xs.append(torch.tensor(toks, dtype=torch.long))
            ys.append(v)
    return xs, torch.tensor(ys, dtype=torch.long)


def _max_tokens(max_depth: int, max_args: int) -> int:
    """The longest expression the generator can produce: every argument a subtree down to ``max_depth``."""
    n = 2 + max_args  # an operator, max_args digits and ``]`` at the deepest level
    for _ in range(max_depth - 1):
        n = 2 + max_args * n
    return n


@register_task("listops", kind="classify",
               description="LRA-style ListOps, nested MAX/MIN/MED/SM over digits, 20-200 tokens (10 classes)",
               sizes=lambda o: {"train": o["n_train"], "val": o["n_val"], "test": o["n_test"],
                                "length": f"{o['min_len']}-{o['max_len']}"})
def listops(seed: int = 0, n_train: int = 2000, n_val: int = 200, n_test: int = 200, min_len: int = 20,
            max_len: int = 200, max_depth: int = 6, max_args: int = 6) -> Task:
    """Variable-length ListOps sequences of ``min_len``..``max_len`` tokens (LRA: 500-2000); the
    three splits come from separately seeded generators."""
    for k, v in dict(n_train=n_train, n_val=n_val, n_test=n_test, max_depth=max_depth).items():
        check_int(k, v, minimum=1)
    if check_int("max_args", max_args) < 2:
        raise ValueError(f"max_args must be >= 2 (every operator takes at least two arguments), got {max_args}")
    if check_int("min_len", min_len) < 4:
        raise ValueError(f"min_len must be >= 4 (the shortest expression, e.g. [MAX 1 2 ], has 4 tokens), got {min_len}")
    if check_int("max_len", max_len) < min_len:
        raise ValueError(f"max_len must be >= min_len, got max_len={max_len} < min_len={min_len}")
    longest = _max_tokens(max_depth, max_args)
    if min_len > longest:
        raise ValueError(f"min_len must be <= {longest}, the longest expression with max_depth={max_depth} and "
                         f"max_args={max_args}, got {min_len} (no expression could be generated)")
    xtr, ytr = _make(n_train, seed * 7919 + 1, min_len, max_len, max_depth, max_args)
    xva, yva = _make(n_val, seed * 7919 + 3, min_len, max_len, max_depth, max_args)
    xte, yte = _make(n_test, seed * 7919 + 2, min_len, max_len, max_depth, max_args)
    return Task("listops", "classify", TensorDataset(xtr, ytr), TensorDataset(xva, yva), TensorDataset(xte, yte),
                vocab_size=VOCAB, num_classes=10, max_len=max_len,
                description="evaluate nested MAX/MIN/MED/SM expressions (LRA)")
