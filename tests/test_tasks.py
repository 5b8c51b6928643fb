"""Tasks are deterministic for a seed and their labels are right (checked independently)."""
import random

import pytest
import torch

from ssmkit.tasks import IGNORE_INDEX, available_tasks, build_task, evaluate_listops, pad_collate
from ssmkit.tasks.listops import OPS, detokenize

SMALL = {
    "copying": dict(n_train=50, n_test=10, n_tokens=4, delay=6),
    "selective_copying": dict(n_train=50, n_test=10, n_tokens=4, length=20),
    "induction_heads": dict(n_train=50, n_test=10, length=32, test_length=64),
    "associative_recall": dict(n_train=50, n_test=10),
    "adding": dict(n_train=50, n_test=10, length=30),
    "listops": dict(n_train=50, n_test=10, max_len=60),
    "digits": dict(),
}


def _stack(ds):
    xs, ys = zip(*[ds[i] for i in range(len(ds))])
    return xs, ys


@pytest.mark.parametrize("name", sorted(SMALL))
def test_deterministic_for_a_seed(name):
    a, b, c = (build_task(name, seed=s, **SMALL[name]) for s in (0, 0, 1))
    xa, ya = _stack(a.train)
    xb, yb = _stack(b.train)
    xc, yc = _stack(c.train)
    assert all(torch.equal(p, q) for p, q in zip(xa, xb)) and all(torch.equal(p, q) for p, q in zip(ya, yb))
    same = all(p.shape == q.shape and torch.equal(p, q) for p, q in zip(xa, xc))
    assert not same, "a different seed must give different data"


def test_copying_labels():
    t = build_task("copying", **SMALL["copying"])
    for x, y in (t.train[i] for i in range(len(t.train))):
        data = x[:4]
        assert torch.equal(y[-4:], data)
        assert (y[:-4] == IGNORE_INDEX).all()
        assert x[4 + 6] == 1 and (x[4:4 + 6] == 0).all()


def test_selective_copying_labels():
    t = build_task("selective_copying", **SMALL["selective_copying"])
    for x, y in (t.train[i] for i in range(len(t.train))):
        body = x[:20]
        data = body[body >= 2]  # data tokens in order of appearance
        assert len(data) == 4
        assert torch.equal(y[-4:], data) and x[20] == 1


def test_induction_heads_labels_and_test_length():
    t = build_task("induction_heads", **SMALL["induction_heads"])
    x, _ = t.test[0]
    assert x.shape == (64,)
    for ds in (t.train, t.test):
        for x, y in (ds[i] for i in range(len(ds))):
            first = int((x == 1).nonzero()[0])
            assert first < len(x) - 1 and x[-1] == 1
            assert y[-1] == x[first + 1] and (y[:-1] == IGNORE_INDEX).all()


def test_associative_recall_labels():
    t = build_task("associative_recall", **SMALL["associative_recall"])
    for x, y in (t.train[i] for i in range(len(t.train))):
        table = {int(k): int(v) for k, v in zip(x[0:16:2], x[1:16:2])}
        assert len(table) == 8
        for q, v in zip(x[16:], y[16:]):
            assert table[int(q)] == int(v)


def test_adding_labels():
    t = build_task("adding", **SMALL["adding"])
    for x, y in (t.train[i] for i in range(len(t.train))):
        marked = x[x[:, 1] == 1, 0]
        assert len(marked) == 2
        assert float(y) == pytest.approx(float(marked.sum()), abs=1e-6)


def _eval_string(s: str) -> int:
    """A third, string-level evaluator (recursive descent) for the ListOps check."""
    toks = s.split()
    pos = 0

    def parse():
        nonlocal pos
        t = toks[pos]
        pos += 1
        if t.startswith("["):
            op, args = t[1:], []
            while toks[pos] != "]":
                args.append(parse())
            pos += 1
            return {"MAX": max(args), "MIN": min(args), "MED": sorted(args)[len(args) // 2], "SM": sum(args) % 10}[op]
        return int(t)

    return parse()


def test_listops_labels_by_independent_evaluators():
    t = build_task("listops", **SMALL["listops"])
    for x, y in (t.train[i] for i in range(len(t.train))):
        assert evaluate_listops(x) == int(y)
        assert _eval_string(detokenize(x)) == int(y)
        assert 20 <= len(x) <= 60
    assert evaluate_listops([11, 3, 10, 13, 5, 8, 15, 1, 15]) == 9  # [MAX 2 9 [MIN 4 7 ] 0 ]


def test_pad_collate_masks_and_targets():
    t = build_task("listops", **SMALL["listops"])
    x, y, mask = pad_collate([t.train[i] for i in range(8)])
    lengths = torch.tensor([len(t.train[i][0]) for i in range(8)])
    assert torch.equal(mask.sum(1), lengths) and x.shape == (8, int(lengths.max()))
    assert (x[~mask] == 0).all()
    tok = build_task("copying", **SMALL["copying"])
    _, y2, _ = pad_collate([tok.train[i] for i in range(3)])
    assert y2.shape == (3, tok.max_len)


def test_digits_and_contract():
    t = build_task("digits")
    x, y = t.train[0]
    assert x.shape == (64, 1) and x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
    assert len(t.test) == 300 and t.num_classes == 10
    counts = torch.bincount(torch.stack([t.test[i][1] for i in range(len(t.test))]))
    assert (counts == 30).all()  # class-balanced held-out split


def test_registry_errors():
    assert "smnist" in available_tasks()
    with pytest.raises(ValueError, match="unknown task"):
        build_task("imagenet")
    with pytest.raises(ValueError, match="no option"):
        build_task("copying", lenght=5)
    with pytest.raises(ValueError, match="n_tokens"):
        build_task("selective_copying", n_tokens=30, length=10)
    with pytest.raises(ValueError, match="size"):
        build_task("smnist", size=5)


def test_ucr_tsv_and_arff(tmp_path):
    tr = tmp_path / "X_TRAIN.tsv"
    te = tmp_path / "X_TEST.tsv"
    tr.write_text("2\t1.0\t2.0\t3.0\t4.0\n1\t4.0\t3.0\tNaN\tNaN\n2\t0.0\t1.0\t0.0\t1.0\n")
    te.write_text("1\t1.0\t1.5\t2.0\tNaN\n")
    t = build_task("ucr", train_path=str(tr), test_path=str(te))
    assert t.num_classes == 2 and len(t.train) == 3 and len(t.test) == 1
    x0, y0 = t.train[0]
    x1, y1 = t.train[1]
    assert x0.shape == (4, 1) and x1.shape == (2, 1)  # trailing NaN dropped: variable length
    assert int(y0) == 1 and int(y1) == 0  # labels "1" < "2"
    assert float(x0.mean()) == pytest.approx(0.0, abs=1e-6)  # z-normalised
    arff = tmp_path / "Y_TRAIN.arff"
    arff.write_text("@relation y\n@attribute t1 numeric\n@attribute t2 numeric\n@attribute target {a,b}\n@data\n1,2,a\n3,4,b\n")
    t2 = build_task("ucr", train_path=str(arff), test_path=str(arff), normalize=False)
    assert torch.equal(t2.train[1][0][:, 0], torch.tensor([3.0, 4.0])) and int(t2.train[1][1]) == 1
    with pytest.raises(FileNotFoundError):
        build_task("ucr", train_path=str(tmp_path / "no.tsv"), test_path=str(te))
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\t1.0\tabc\n")
    with pytest.raises(ValueError, match="non-numeric"):
        build_task("ucr", train_path=str(bad), test_path=str(te))
    with pytest.raises(ValueError, match="train_path"):
        build_task("ucr")
