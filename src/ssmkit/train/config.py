"""Training configuration: one dataclass, from flags, a YAML/JSON file or a shipped recipe,
validated field by field and saved with every run."""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from .._checks import (check_bool, check_choice, check_float, check_fraction, check_int, check_positive_int)

__all__ = ["TrainConfig", "load_config_file", "ConfigError", "RESUME_FREE_FIELDS"]


class ConfigError(ValueError):
    """A configuration file that cannot be read (missing, malformed, not a mapping)."""


# Fields a resumed run may change: the stopping rule, the logging cadence and execution knobs.
RESUME_FREE_FIELDS = frozenset({"epochs", "max_steps", "time_budget", "eval_every", "log_every", "checkpoint_every",
                                "early_stopping", "compile"})

_FLOAT_FIELDS = ("lr", "weight_decay", "grad_clip", "time_budget", "dropout", "warmup_fraction", "ssm_lr",
                 "ssm_weight_decay")
# a number written the way YAML 1.1 does not recognise (``1e-3``, ``5E4``) or a quoted one
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass
class TrainConfig:
    task: str = "smnist"
    task_options: Dict[str, Any] = field(default_factory=dict)
    layer: str = "s4d"
    layer_options: Dict[str, Any] = field(default_factory=dict)
    backbone_options: Dict[str, Any] = field(default_factory=dict)  # extra Backbone arguments (norm, prenorm, ...)
    d_model: int = 64
    n_layers: int = 4
    d_state: Optional[int] = None  # passed to the layer when set
    dropout: float = 0.0
    pooling: str = "mean"
    lr: float = 3e-3
    weight_decay: float = 0.05
    ssm_lr: Optional[float] = None  # learning rate of the SSM parameters (A, dt, B...); None: the layer's hint
    ssm_weight_decay: Optional[float] = None  # their weight decay; None: the layer's hint (0)
    epochs: int = 5
    max_steps: int = 0  # > 0: stop after this many optimizer steps (overrides epochs)
    batch_size: int = 32
    warmup_steps: int = 50
    warmup_fraction: float = 0.1  # warm-up never takes more than this fraction of the run
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 0  # steps between evaluations on the validation split (0: once per epoch)
    log_every: int = 10
    checkpoint_every: int = 0  # steps between checkpoints (0: at every evaluation)
    early_stopping: int = 0  # > 0: stop after this many evaluations without a better validation metric
    time_budget: float = 0.0  # seconds; > 0: the schedule is laid over it and training stops when it is spent
    init_from: str = ""  # a run or checkpoint folder whose model weights start this run (e.g. a length curriculum)
    precision: str = "fp32"  # "bf16": mixed precision (autocast to bfloat16 on the model's device)
    compile: bool = False  # torch.compile the model (falls back to eager with a warning if compiling fails)

    def validate(self) -> "TrainConfig":
        """Check every field; a bad one raises ValueError/TypeError naming it."""
        for k in ("task", "layer", "init_from"):
            if not isinstance(getattr(self, k), str):
                raise TypeError(f"{k} must be a string, got {getattr(self, k)!r} ({type(getattr(self, k)).__name__})")
        for k in ("d_model", "n_layers", "epochs", "batch_size", "log_every"):
            check_positive_int(k, getattr(self, k))
        for k in ("max_steps", "warmup_steps", "eval_every", "checkpoint_every", "early_stopping", "seed"):
            check_int(k, getattr(self, k), minimum=0)
        if self.d_state is not None:
            check_positive_int("d_state", self.d_state)
        check_float("lr", self.lr, low=0.0, low_open=True)
        check_float("grad_clip", self.grad_clip, low=0.0, low_open=True)
        check_float("weight_decay", self.weight_decay, low=0.0)
        check_float("time_budget", self.time_budget, low=0.0)
        check_fraction("dropout", self.dropout)
        check_fraction("warmup_fraction", self.warmup_fraction, allow_one=True)
        if self.ssm_lr is not None:
            check_float("ssm_lr", self.ssm_lr, low=0.0, low_open=True)
        if self.ssm_weight_decay is not None:
            check_float("ssm_weight_decay", self.ssm_weight_decay, low=0.0)
        check_choice("precision", self.precision, ("fp32", "bf16"))
        check_choice("pooling", self.pooling, ("mean", "last"))
        check_bool("compile", self.compile)
        for k in ("task_options", "layer_options", "backbone_options"):
            v = getattr(self, k)
            if not isinstance(v, Mapping) or not all(isinstance(name, str) for name in v):
                raise TypeError(f"{k} must be a mapping of option names to values, got {v!r}")
        from ..layers import get_layer
        from ..tasks import available_tasks

        get_layer(self.layer)  # a ValueError naming the known layers
        if self.task not in available_tasks():
            raise ValueError(f"unknown task {self.task!r}; expected one of {', '.join(sorted(available_tasks()))}")
        self._check_model_options()
        return self

    def layer_kwargs(self, l_max: int = 0) -> Dict[str, Any]:
        """The keyword arguments of each layer: ``layer_options`` plus ``d_state`` (and ``l_max``
        for RTF, from the task's longest sequence, unless given)."""
        kw = dict(self.layer_options)
        if self.d_state is not None:
            kw["d_state"] = self.d_state
        if self.layer == "rtf" and "l_max" not in kw:
            kw["l_max"] = max(1, l_max)
        return kw

    def _check_model_options(self) -> None:
        """Build one block with these options (on the side of the random stream) so that a
        value the layer refuses (an odd d_state for S4/S4D/S5, an unknown option) is reported
        now, before any file is written."""
        import torch

        from ..models import Backbone

        with torch.random.fork_rng(devices=[]):
            Backbone(self.d_model, 1, self.layer, self.layer_kwargs(16), d_input=1, dropout=self.dropout,
                     **self.backbone_options)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """A validated config from a mapping (e.g. a parsed file); numbers written as strings
        in numeric fields (YAML reads ``1e-3`` as a string) are read as numbers."""
        if not isinstance(d, Mapping):
            raise TypeError(f"config must be a mapping of field names to values, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config key(s): {', '.join(map(str, unknown))}; "
                             f"known: {', '.join(sorted(names))}")
        d = dict(d)
        for k in _FLOAT_FIELDS:
            v = d.get(k)
            if isinstance(v, str) and _NUMBER.match(v.strip()):
                d[k] = float(v)
        return cls(**d).validate()


def _parse_yaml(text: str, where: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where} is not valid YAML{at}: {problem}") from None


def load_config_file(path) -> Dict[str, Any]:
    """Read a YAML or JSON config file into a dict (ConfigError if it is malformed)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {str(p)!r} does not exist")
    text = p.read_text()
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid JSON: {exc}") from None
    else:
        data = _parse_yaml(text, f"config file {str(p)!r}")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of options, got {type(data).__name__}")
    return data


