"""Time-series classification from UCR/UEA archive files (Dau et al. 2019; Bagnall et al. 2018).

- ``ucr``: a dataset of an archive folder by name (``archive=DIR``, ``dataset=NAME`` reads
  ``DIR/NAME/NAME_TRAIN.<ext>`` and ``DIR/NAME/NAME_TEST.<ext>``, ``<ext>`` the first of ``.ts``,
  ``.tsv``, ``.arff``, ``.txt`` present), or a train file and a test file given by path.
- ``sktime``: the archive datasets that the ``sktime`` package ships inside its wheel (for
  example ``JapaneseVowels``, ``BasicMotions``, ``GunPoint``), read from the installed package's
  data folder; nothing is downloaded (``pip install sktime`` or ``pip install ssmkit[sktime]``).

File formats:

- ``.ts`` (sktime/UEA): ``@`` header lines, then one case per line, dimensions separated by
  ``:``, values by ``,``, the class label (or a regression target) last. Multivariate and
  unequal-length series are supported; ``?`` marks a missing value.
- ``.tsv`` / ``.txt`` / ``.csv`` (UCR 2018): one univariate series per line, the label in the first
  column; variable-length series are padded with ``NaN`` in the files.
- ``.arff`` (univariate): numeric attributes then the class attribute last.

Trailing missing values (the files' padding) are dropped, so each item keeps its own length and
:func:`~ssmkit.tasks.pad_collate` re-pads a batch with a mask; a missing value inside a series is
an error. Labels are mapped to 0..C-1 in sorted order (numerically when they are numbers), one
map for train and test. Items are ``(x, y)`` with ``x`` of shape (length, dimensions).

The archives ship no validation split: a seeded ``val_fraction`` of the training file (stratified
by class; uniform for regression) is held out as ``val`` before anything is normalised.

``normalize``: ``"series"`` (or ``True``) z-normalises each series and channel on its own (the
UCR convention); ``"train"`` standardises each channel with the mean and standard deviation of
the training split, after the validation items are held out (keeps levels, which matter for e.g. JapaneseVowels); ``"none"`` (or
``False``) keeps the raw values.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch

from .._checks import check_fraction
from .base import Task, TensorDataset
from .registry import measure_sizes, register_task, unknown_sizes
from .splits import random_holdout, split_generator, stratified_holdout

__all__ = ["ucr", "sktime_dataset", "read_ucr", "read_ts", "sktime_datasets", "archive_datasets", "archive_files"]

SPLIT_EXTENSIONS = (".ts", ".tsv", ".arff", ".txt")  # looked for in this order in an archive folder
_VAL_SALT = 29

SKTIME_MISSING = ("the 'sktime' task reads the datasets that the sktime package ships, and sktime is not "
                  "installed: pip install sktime  (or: pip install 'ssmkit[sktime]')")


# --------------------------------------------------------------------------- readers
def _read_delimited(path: Path) -> Tuple[List[str], List[List[float]]]:
    labels, rows = [], []
    for i, line in enumerate(path.read_text().splitlines()):
        line = line.strip()
        if not line:
            continue
        parts = line.replace(",", " ").replace("\t", " ").split()
        try:
            values = [float(v) for v in parts[1:]]
        except ValueError:
            raise ValueError(f"{path}: line {i + 1} has a non-numeric value") from None
        labels.append(parts[0])
        rows.append(values)
    return labels, rows


def _read_arff(path: Path) -> Tuple[List[str], List[List[float]]]:
    labels, rows, in_data = [], [], False
    for i, line in enumerate(path.read_text().splitlines()):
        line = line.strip()
        if not line or line.startswith("%"):
            continue
        if line.lower().startswith("@data"):
            in_data = True
            continue
        if not in_data:
            if line.lower().startswith("@attribute") and "relational" in line.lower():
                raise ValueError(f"{path}: multivariate (relational) ARFF is not supported; use the .ts file of the dataset")
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            values = [float("nan") if v == "?" else float(v) for v in parts[:-1]]
        except ValueError:
            raise ValueError(f"{path}: data line {i + 1} has a non-numeric value") from None
        labels.append(parts[-1].strip("'\""))
        rows.append(values)
    return labels, rows


def _read_ts_raw(path: Path) -> Tuple[List[str], List[List[List[float]]], Dict[str, str]]:
    """Labels, per-case lists of dimensions (lists of floats), and the header tags (lower-case)."""
    header: Dict[str, str] = {}
    labels: List[str] = []
    cases: List[List[List[float]]] = []
    in_data = False
    has_label = True
    for i, raw in enumerate(path.read_text().splitlines()):
        line = raw.strip()
        if not line or (line[0] in "#%" and not in_data):  # comments (the archive uses both)
            continue
        if not in_data:
            if not line.startswith("@"):
                raise ValueError(f"{path}: line {i + 1} is data before the @data tag")
            tag, _, value = line[1:].partition(" ")
            tag, value = tag.lower(), value.strip()
            if tag == "data":
                in_data = True
                if header.get("timestamps", "false").lower() == "true":
                    raise ValueError(f"{path}: time-stamped .ts files are not supported")
                has_label = (header.get("classlabel", "false").split() or ["false"])[0].lower() == "true" or \
                    header.get("targetlabel", "false").lower() == "true"
            else:
                header[tag] = value
            continue
        fields = line.split(":")
        if has_label:
            labels.append(fields[-1].strip())
            fields = fields[:-1]
        else:
            labels.append("")
        dims = []
        for d, f in enumerate(fields):
            try:
                dims.append([float("nan") if v.strip() == "?" else float(v) for v in f.split(",")])
            except ValueError:
                raise ValueError(f"{path}: line {i + 1}, dimension {d + 1} has a non-numeric value") from None
        cases.append(dims)
    if not in_data:
        raise ValueError(f"{path}: no @data section; is this a .ts file?")
    return labels, cases, header


def _trim(values: List[float]) -> List[float]:
    end = len(values)
    while end and math.isnan(values[end - 1]):
        end -= 1
    return values[:end]


def _to_series(p: Path, i: int, dims: List[List[float]]) -> torch.Tensor:
    """One case -> (length, dimensions) float tensor, trailing padding dropped, checked."""
    dims = [_trim(d) for d in dims]
    lengths = {len(d) for d in dims}
    if len(lengths) != 1:
        raise ValueError(f"{p}: case {i + 1} has dimensions of different lengths {sorted(lengths)}")
    if not dims or not dims[0]:
        raise ValueError(f"{p}: case {i + 1} is empty")
    t = torch.tensor(dims, dtype=torch.float32).T.contiguous()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{p}: case {i + 1} has missing, NaN or infinite values inside the series")
    return t


def read_ts(path) -> Tuple[List[str], List[torch.Tensor], Dict[str, str]]:
    """A ``.ts`` file: labels (strings), series (each (length, dimensions)) and header tags."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"time-series file {str(p)!r} does not exist")
    labels, cases, header = _read_ts_raw(p)
    if not cases:
        raise ValueError(f"{p}: no series found")
    series = [_to_series(p, i, dims) for i, dims in enumerate(cases)]
    if len({s.shape[1] for s in series}) != 1:
        raise ValueError(f"{p}: cases have different numbers of dimensions")
    return labels, series, header


def read_ucr(path) -> Tuple[List[str], List[torch.Tensor]]:
    """Labels and series (each a float tensor of shape (length, dimensions)) from one archive file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"time-series file {str(p)!r} does not exist")
    if p.suffix.lower() == ".ts":
        labels, series, _ = read_ts(p)
        return labels, series
    labels, rows = _read_arff(p) if p.suffix.lower() == ".arff" else _read_delimited(p)
    if not rows:
        raise ValueError(f"{p}: no series found")
    return labels, [_to_series(p, i, [r]) for i, r in enumerate(rows)]


# --------------------------------------------------------------------------- task assembly
def _norm_mode(normalize) -> str:
    if normalize is True:
        return "series"
    if normalize is False or normalize is None:
        return "none"
    if normalize in ("series", "train", "none"):
        return normalize
    raise ValueError(f"normalize must be 'series', 'train', 'none' (or true/false), got {normalize!r}")


def _isnum(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _normalizer(mode: str, xtr: List[torch.Tensor]):
    """The map applied to every series: per series (``series``), with the training items'
    per-channel statistics (``train``), or none."""
    if mode == "series":
        return lambda x: x if len(x) < 2 else (x - x.mean(0)) / x.std(0).clamp(min=1e-8)
    if mode == "train":
        cat = torch.cat(xtr)
        mu = cat.mean(0)
        sd = cat.std(0).clamp(min=1e-8) if len(cat) > 1 else torch.ones(cat.shape[1])
        return lambda x: (x - mu) / sd
    return lambda x: x


def _make_task(name: str, description: str, ltr, xtr, lte, xte, normalize, val_fraction: float, seed: int,
               regression: bool = False) -> Task:
    mode = _norm_mode(normalize)
    if len({x.shape[1] for x in xtr + xte}) != 1:
        raise ValueError(f"{name}: the train and test files have different numbers of dimensions")
    if regression:
        try:
            ytr = torch.tensor([float(v) for v in ltr])
            yte = torch.tensor([float(v) for v in lte])
        except ValueError:
            raise ValueError(f"{name}: regression targets must be numbers") from None
        num_classes = 1
        if len(xtr) < 2:
            raise ValueError(f"{name}: need at least 2 training series to hold out a validation split, got {len(xtr)}")
        keep, held = random_holdout(len(xtr), val_fraction, split_generator(seed, _VAL_SALT))
    else:
        classes = sorted(set(ltr) | set(lte), key=lambda s: (0, float(s), s) if _isnum(s) else (1, 0.0, s))
        if len(classes) < 2:
            raise ValueError(f"{name}: need at least 2 classes, found {classes}")
        index = {c: i for i, c in enumerate(classes)}
        ytr = torch.tensor([index[l] for l in ltr])
        yte = torch.tensor([index[l] for l in lte])
        num_classes = len(classes)
        keep, held = stratified_holdout(ytr, val_fraction, split_generator(seed, _VAL_SALT))
    xva, yva = [xtr[int(i)] for i in held], ytr[held]
    xtr, ytr = [xtr[int(i)] for i in keep], ytr[keep]
    prep = _normalizer(mode, xtr)
    xtr, xva, xte = [prep(x) for x in xtr], [prep(x) for x in xva], [prep(x) for x in xte]
    max_len = max(len(x) for x in xtr + xva + xte)
    task = Task(name, "regress" if regression else "classify", TensorDataset(xtr, ytr), TensorDataset(xva, yva),
                TensorDataset(xte, yte), d_input=xtr[0].shape[1], num_classes=num_classes, max_len=max_len,
                description=description)
    task.options = {"normalize": mode}
    return task


def archive_datasets(archive, extensions=SPLIT_EXTENSIONS) -> List[str]:
    """Names ``NAME`` of the folders ``archive/NAME`` holding ``NAME_TRAIN`` and ``NAME_TEST``
    files with one of ``extensions``."""
    root = Path(archive)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and all(
        any((p / f"{p.name}_{split}{ext}").is_file() for ext in extensions) for split in ("TRAIN", "TEST")))


def archive_files(archive, dataset: str, extensions=SPLIT_EXTENSIONS) -> Tuple[Path, Path, str]:
    """``(train_file, test_file, name)`` of ``dataset`` in an archive folder laid out as the UCR
    and UEA archives are (``archive/NAME/NAME_TRAIN.ts`` ...); the name is matched exactly, else
    case-insensitively; the first extension of ``extensions`` present for both files is used."""
    if not isinstance(archive, (str, Path)) or not str(archive):
        raise ValueError(f"archive must be a folder path, got {archive!r}")
    if not isinstance(dataset, str) or not dataset:
        raise ValueError(f"dataset must be a dataset name (a folder of the archive), got {dataset!r}")
    root = Path(archive)
    if not root.is_dir():
        raise FileNotFoundError(f"archive folder {str(root)!r} does not exist")
    available = archive_datasets(root, extensions)
    name = dataset if dataset in available else {n.lower(): n for n in available}.get(dataset.lower())
    if name is None:
        raise ValueError(f"dataset {dataset!r} is not in the archive {str(root)!r} (looked for "
                         f"{dataset}/{dataset}_TRAIN and _TEST with {', '.join(extensions)}); "
                         f"available: {', '.join(available) or 'none'}")
    folder = root / name
    for ext in extensions:
        tr, te = folder / f"{name}_TRAIN{ext}", folder / f"{name}_TEST{ext}"
        if tr.is_file() and te.is_file():
            return tr, te, name
    raise ValueError(f"dataset {name!r} in {str(root)!r} has its TRAIN and TEST files in different formats; "
                     f"give them as train_path and test_path")


def _ucr_sizes(o) -> dict:
    if not (o["archive"] or o["train_path"]):
        return unknown_sizes("from the files (archive=DIR dataset=NAME, or train_path and test_path)")
    return measure_sizes(ucr(**o))


@register_task("ucr", kind=("classify",), sizes=_ucr_sizes,
               description="a UCR/UEA dataset by name (--task-opt archive=DIR --task-opt dataset=NAME) or two files "
                           "(train_path=..., test_path=...): .ts, .tsv, .arff")
def ucr(seed: int = 0, archive: str = "", dataset: str = "", train_path: str = "", test_path: str = "",
        normalize: Union[bool, str] = True, val_fraction: float = 0.1) -> Task:
    """A classification task from a UCR/UEA archive (``archive`` folder and ``dataset`` name) or
    from a train file and a test file (``.ts``, ``.tsv``, ``.arff``); a stratified
    ``val_fraction`` of the training file is held out for validation."""
    for name, value in (("archive", archive), ("dataset", dataset), ("train_path", train_path), ("test_path", test_path)):
        if not isinstance(value, (str, Path)):
            raise TypeError(f"{name} must be a string (a path or a dataset name), got {value!r} ({type(value).__name__})")
    _norm_mode(normalize)
    check_fraction("val_fraction", val_fraction, allow_zero=False)
    by_name, by_path = bool(archive or dataset), bool(train_path or test_path)
    if by_name and by_path:
        raise ValueError("ucr takes either archive and dataset, or train_path and test_path, not both")
    if by_name:
        train_file, test_file, dataset = archive_files(archive, dataset)
    else:
        if not train_path or not test_path:
            raise ValueError("ucr needs archive and dataset (a folder of the UCR/UEA archives), or train_path and "
                             "test_path (UCR/UEA .ts, .tsv or .arff files)")
        train_file, test_file = Path(train_path), Path(test_path)
    ltr, xtr = read_ucr(train_file)
    lte, xte = read_ucr(test_file)
    what = f"UCR/UEA dataset {dataset}" if by_name else f"UCR/UEA files {train_file.name}, {test_file.name}"
    task = _make_task("ucr", what, ltr, xtr, lte, xte, normalize, val_fraction, seed)
    task.options.update(archive=str(archive), dataset=dataset, train_path=str(train_path), test_path=str(test_path))
    task.files = {"train": str(train_file), "test": str(test_file)}
    return task


# --------------------------------------------------------------------------- datasets shipped with sktime
def _sktime_data_dir() -> Path:
    """The ``datasets/data`` folder of the installed sktime package, found without importing it
    (importing sktime is slow and pulls in pandas; the files are all we need)."""
    try:
        spec = importlib.util.find_spec("sktime")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(SKTIME_MISSING)
    for root in spec.submodule_search_locations:
        d = Path(root) / "datasets" / "data"
        if d.is_dir():
            return d
    raise ImportError(f"the installed sktime package has no datasets/data folder (looked in "
                      f"{list(spec.submodule_search_locations)}); reinstall it: pip install --force-reinstall sktime")


def sktime_datasets() -> List[str]:
    """Names of the datasets with ``<name>_TRAIN.ts`` and ``<name>_TEST.ts`` in the installed sktime."""
    return archive_datasets(_sktime_data_dir(), (".ts",))


def _sktime_sizes(o) -> dict:
    try:
        return measure_sizes(sktime_dataset(**o))
    except ImportError:
        return unknown_sizes("sktime is not installed")


@register_task("sktime", kind=("classify", "regress"), sizes=_sktime_sizes,
               description="UCR/UEA datasets shipped in the sktime package (needs `pip install sktime`): "
                           "--task-opt dataset=JapaneseVowels")
def sktime_dataset(seed: int = 0, dataset: str = "JapaneseVowels", normalize: Union[bool, str] = "train",
                   val_fraction: float = 0.1) -> Task:
    """A UCR/UEA dataset shipped inside the sktime package (read locally, never downloaded).

    ``dataset`` is a folder of ``sktime/datasets/data`` with ``<name>_TRAIN.ts`` and ``<name>_TEST.ts``,
    e.g. ``JapaneseVowels`` (12 dimensions, lengths 7-29, 9 speakers, 270/370 cases),
    ``BasicMotions`` (6 dimensions), ``GunPoint``, ``ItalyPowerDemand``, ``ArrowHead``, ``PLAID``
    (unequal lengths); ``Tecator`` and ``Covid3Month`` are regression problems.
    """
    if not isinstance(dataset, str):
        raise TypeError(f"dataset must be the name of a dataset sktime ships, got {dataset!r} ({type(dataset).__name__})")
    if not dataset:
        raise ValueError("dataset must be the name of a dataset sktime ships, got ''")
    _norm_mode(normalize)
    check_fraction("val_fraction", val_fraction, allow_zero=False)
    available = sktime_datasets()
    match = {n.lower(): n for n in available}.get(dataset.lower())
    if match is None:
        raise ValueError(f"dataset {dataset!r} is not one that the installed sktime ships; "
                         f"available: {', '.join(available)}")
    train_file, test_file, _ = archive_files(_sktime_data_dir(), match, (".ts",))
    ltr, xtr, header = read_ts(train_file)
    lte, xte, _ = read_ts(test_file)
    regression = header.get("targetlabel", "false").lower() == "true"
    dims = xtr[0].shape[1]
    lengths = sorted({len(x) for x in xtr + xte})
    span = f"length {lengths[0]}" if len(lengths) == 1 else f"lengths {lengths[0]}-{lengths[-1]}"
    desc = f"{match} from sktime's package data, {dims} dimension{'s' if dims > 1 else ''}, {span}"
    task = _make_task("sktime", desc, ltr, xtr, lte, xte, normalize, val_fraction, seed, regression=regression)
    task.options["dataset"] = match
    task.files = {"train": str(train_file), "test": str(test_file)}
    return task
