"""Synthetic sequence tasks, generated in code from a seed (nothing is downloaded).

Token tasks (``kind="tokens"``) score only the positions that matter; the rest of the targets
are ``IGNORE_INDEX``. Token ids: 0 is padding/blank, small ids are special markers, data
tokens follow.

- ``copying`` (Arjovsky et al. 2016): ``n_tokens`` data tokens, ``delay`` blanks, a marker, then
  reproduce the data tokens.
- ``selective_copying`` (Gu & Dao 2023, Mamba §3.1 and E.1; the generator of the S4 repository's
  copying task with ``variable=True``): ``n_tokens`` data tokens scattered at random positions
  among ``length`` positions of noise (blank) tokens, then ``n_tokens`` marker tokens; at the
  i-th marker the model outputs the i-th data token. Only the marker positions are scored.
- ``induction_heads`` (Olsson et al. 2022; Mamba §4.1.2): a random sequence containing a
  special token followed by a key token; at the end the special token appears again and the
  model must predict the key. Trained at one length, testable at another.
- ``associative_recall`` (multi-query, Arora et al. 2023 "Zoology"): key-value pairs, then
  queries of keys; predict each query's value.
- ``adding`` (Hochreiter & Schmidhuber 1997): real input (L, 2) of values and two marks;
  regress the sum of the two marked values.
"""
from __future__ import annotations

import torch

from .._checks import check_int
from .base import IGNORE_INDEX, Task, TensorDataset
from .registry import register_task

__all__ = ["copying", "selective_copying", "induction_heads", "associative_recall", "adding"]

MARK = 1  # the marker token of the copying tasks (0 is the blank / noise token)
SPECIAL = 1  # the special token of induction heads


def _gen(seed: int, split: str) -> torch.Generator:
    """Each split has its own stream: train, val and test never share a generator state."""
    return torch.Generator().manual_seed(int(seed) * 1000 + {"train": 1, "val": 2, "test": 3}[split])


def _check_split_sizes(n_train, n_val, n_test) -> None:
    for name, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        check_int(name, v, minimum=1)


def _check_vocab(vocab, minimum: int, why: str) -> int:
    v = check_int("vocab", vocab)
    if v < minimum:
        raise ValueError(f"vocab must be >= {minimum}, got {v}: {why}")
    return v


_ONE_TOKEN = "with a single data token every answer is the same token, so there is nothing to remember"


def _splits(make, n_train, n_val, n_test, seed, **kw):
    _check_split_sizes(n_train, n_val, n_test)
    return (make(n_train, _gen(seed, "train"), **kw), make(n_val, _gen(seed, "val"), **kw),
            make(n_test, _gen(seed, "test"), **kw))


def _fixed_sizes(length):
    """``sizes`` for a generator: the split sizes are options, ``length(o)`` gives the length."""
    return lambda o: {"train": o["n_train"], "val": o["n_val"], "test": o["n_test"], "length": str(length(o))}


# --------------------------------------------------------------------------- copying
def _copying(n, g, n_tokens, delay, vocab):
    data = torch.randint(2, 2 + vocab, (n, n_tokens), generator=g)
    L = n_tokens + delay + 1 + n_tokens
    x = torch.zeros(n, L, dtype=torch.long)
    x[:, :n_tokens] = data
    x[:, n_tokens + delay] = MARK
    y = torch.full((n, L), IGNORE_INDEX, dtype=torch.long)
    y[:, -n_tokens:] = data
    return TensorDataset(x, y)


@register_task("copying", kind="tokens",
               description="copy 10 tokens after a delay of 50 blanks (Arjovsky et al. 2016)",
               sizes=_fixed_sizes(lambda o: 2 * o["n_tokens"] + o["delay"] + 1))
def copying(seed: int = 0, n_train: int = 2000, n_val: int = 200, n_test: int = 200, n_tokens: int = 10,
            delay: int = 50, vocab: int = 8) -> Task:
    check_int("n_tokens", n_tokens, minimum=1)
    check_int("delay", delay, minimum=0)
    _check_vocab(vocab, 2, _ONE_TOKEN)
    tr, va, te = _splits(_copying, n_train, n_val, n_test, seed, n_tokens=n_tokens, delay=delay, vocab=vocab)
    return Task("copying", "tokens", tr, va, te, vocab_size=2 + vocab, num_classes=2 + vocab,
                max_len=2 * n_tokens + delay + 1, description="reproduce n_tokens tokens after a delay of blanks")


# --------------------------------------------------------------------------- selective copying
def _selective(n, g, n_tokens, length, vocab):
    L = length + n_tokens
    x = torch.zeros(n, L, dtype=torch.long)  # 0 is the noise token
    y = torch.full((n, L), IGNORE_INDEX, dtype=torch.long)
    data = torch.randint(2, 2 + vocab, (n, n_tokens), generator=g)
    pos = torch.argsort(torch.rand(n, length, generator=g), dim=1)[:, :n_tokens].sort(dim=1).values
    x.scatter_(1, pos, data)
    # One marker per answer, as in the reference generator: the input at each answer position says
    # "output now", so the model need not tell answer slots apart from the noise by counting alone.
    x[:, length:] = MARK
    y[:, length:] = data
    return TensorDataset(x, y)


@register_task("selective_copying", kind="tokens",
               description="copy 8 tokens scattered among 64 noise positions, in order (Mamba §3.1)",
               sizes=_fixed_sizes(lambda o: o["length"] + o["n_tokens"]))
def selective_copying(seed: int = 0, n_train: int = 4000, n_val: int = 400, n_test: int = 400, n_tokens: int = 8,
                      length: int = 64, vocab: int = 8) -> Task:
    check_int("n_tokens", n_tokens, minimum=1)
    check_int("length", length, minimum=2)
    _check_vocab(vocab, 2, _ONE_TOKEN)
    if n_tokens >= length:
        raise ValueError(f"n_tokens must be < length (at least one noise position, or nothing is selective), "
                         f"got n_tokens={n_tokens} >= length={length}")
    tr, va, te = _splits(_selective, n_train, n_val, n_test, seed, n_tokens=n_tokens, length=length, vocab=vocab)
    return Task("selective_copying", "tokens", tr, va, te, vocab_size=2 + vocab, num_classes=2 + vocab,
                max_len=length + n_tokens,
                description="copy the n_tokens data tokens scattered among noise, in order, at the n_tokens markers")


# --------------------------------------------------------------------------- induction heads
def _induction(n, g, length, vocab):
    x = torch.randint(2, 2 + vocab, (n, length), generator=g)
    pos = torch.randint(0, length - 3, (n,), generator=g)  # the special token, key after it, not at the end
    key = torch.randint(2, 2 + vocab, (n,), generator=g)
    rows = torch.arange(n)
    x[rows, pos] = SPECIAL
    x[rows, pos + 1] = key
    x[:, -1] = SPECIAL
    y = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
    y[:, -1] = key
    return TensorDataset(x, y)


def _induction_length(o) -> str:
    test_length = o["test_length"] or o["length"]
    return str(o["length"]) + ("" if test_length == o["length"] else f" (test {test_length})")


@register_task("induction_heads", kind="tokens",
               description="recall the token after a special token; test length configurable (Mamba §4.1.2)",
               sizes=lambda o: {"train": o["n_train"], "val": o["n_val"], "test": o["n_test"],
                                "length": _induction_length(o)})
def induction_heads(seed: int = 0, n_train: int = 4000, n_val: int = 400, n_test: int = 400, length: int = 256,
                    test_length: int = 0, vocab: int = 16) -> Task:
    """``test_length`` (default 0: ``length``) lets the test split be longer than training;
    the validation split has the training length (it selects models, it does not test them)."""
    _check_split_sizes(n_train, n_val, n_test)
    why4 = "the special token, the key after it, one token between and the final special token"
    if check_int("length", length) < 4:
        raise ValueError(f"length must be >= 4 ({why4}), got {length}")
    if check_int("test_length", test_length, minimum=0) and test_length < 4:
        raise ValueError(f"test_length must be 0 (the training length) or >= 4 ({why4}), got {test_length}")
    _check_vocab(vocab, 3, "one key is scored per sequence, and with 2 tokens half of all guesses are right, "
                           "so accuracy cannot tell recall from chance")
    test_length = test_length or length
    tr = _induction(n_train, _gen(seed, "train"), length, vocab)
    va = _induction(n_val, _gen(seed, "val"), length, vocab)
    te = _induction(n_test, _gen(seed, "test"), test_length, vocab)
    return Task("induction_heads", "tokens", tr, va, te, vocab_size=2 + vocab, num_classes=2 + vocab,
                max_len=max(length, test_length),
                description="after the special token reappears, predict the token that followed it earlier")


# --------------------------------------------------------------------------- associative recall
def _mqar(n, g, n_pairs, n_queries, vocab):
    keys = torch.argsort(torch.rand(n, vocab, generator=g), dim=1)[:, :n_pairs] + 1  # distinct keys in 1..vocab
    vals = torch.randint(vocab + 1, 2 * vocab + 1, (n, n_pairs), generator=g)
    q_idx = torch.randint(0, n_pairs, (n, n_queries), generator=g)
    L = 2 * n_pairs + n_queries
    x = torch.zeros(n, L, dtype=torch.long)
    x[:, 0:2 * n_pairs:2] = keys
    x[:, 1:2 * n_pairs:2] = vals
    x[:, 2 * n_pairs:] = torch.gather(keys, 1, q_idx)
    y = torch.full((n, L), IGNORE_INDEX, dtype=torch.long)
    y[:, 2 * n_pairs:] = torch.gather(vals, 1, q_idx)
    return TensorDataset(x, y)


@register_task("associative_recall", kind="tokens",
               description="multi-query associative recall, 8 key-value pairs then 8 queries (Zoology)",
               sizes=_fixed_sizes(lambda o: 2 * o["n_pairs"] + o["n_queries"]))
def associative_recall(seed: int = 0, n_train: int = 4000, n_val: int = 400, n_test: int = 400, n_pairs: int = 8,
                       n_queries: int = 8, vocab: int = 32) -> Task:
    if check_int("n_pairs", n_pairs) < 2:
        raise ValueError(f"n_pairs must be >= 2, got {n_pairs}: with one pair every query asks for the same value, "
                         f"so nothing is associated")
    check_int("n_queries", n_queries, minimum=1)
    _check_vocab(vocab, 2, "keys and values are each drawn from vocab tokens, and a single value token makes "
                           "every answer the same")
    if n_pairs > vocab:
        raise ValueError(f"n_pairs must be <= vocab (keys are distinct), got n_pairs={n_pairs} > vocab={vocab}")
    tr, va, te = _splits(_mqar, n_train, n_val, n_test, seed, n_pairs=n_pairs, n_queries=n_queries, vocab=vocab)
    return Task("associative_recall", "tokens", tr, va, te, vocab_size=2 * vocab + 1, num_classes=2 * vocab + 1,
                max_len=2 * n_pairs + n_queries, description="key-value pairs, then queries: predict each key's value")


# --------------------------------------------------------------------------- adding
def _adding(n, g, length):
    vals = torch.rand(n, length, generator=g)
    marks = torch.zeros(n, length)
    half = length // 2
    i = torch.randint(0, half, (n,), generator=g)
    j = torch.randint(half, length, (n,), generator=g)
    rows = torch.arange(n)
    marks[rows, i] = 1.0
    marks[rows, j] = 1.0
    x = torch.stack([vals, marks], dim=-1)
    y = vals[rows, i] + vals[rows, j]
    return TensorDataset(x, y)


@register_task("adding", kind="regress",
               description="sum of the two marked values in a length-200 sequence (Hochreiter & Schmidhuber 1997)",
               sizes=_fixed_sizes(lambda o: o["length"]))
def adding(seed: int = 0, n_train: int = 4000, n_val: int = 400, n_test: int = 400, length: int = 200) -> Task:
    if check_int("length", length) < 2:
        raise ValueError(f"length must be >= 2 (one marked value in each half of the sequence), got {length}")
    tr, va, te = _splits(_adding, n_train, n_val, n_test, seed, length=length)
    return Task("adding", "regress", tr, va, te, vocab_size=None, d_input=2, num_classes=1, max_len=length,
                description="regress the sum of the two marked values (predicting 1.0 gives MSE ~0.167)")
