"""A trained run with every LTI layer replaced by its reduced copy, written as a new run folder
(:func:`reduce_run`; the reduction itself is :mod:`ssmkit.reduction`)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from .._checks import check_choice
from ..reduction import reduce_model

__all__ = ["reduce_run"]


def reduce_run(run, out, order: Optional[int] = None, tolerance: Optional[float] = None, to: str = "s4d",
               n_grid: int = 4096) -> dict:
    """Reduce every LTI layer of the trained run ``run`` (:func:`ssmkit.reduction.reduce_model`)
    and write a new run folder ``out`` that ``load_model`` (hence ``ssmkit evaluate``, ``generate``,
    ``inspect``) accepts: a checkpoint whose config builds the reduced model, plus
    ``reduction.json`` (orders, Hankel singular values, bounds, measured errors). ``out`` must
    not exist; it is written beside itself and renamed into place when complete."""
    from ..train import TrainConfig, load_model
    from ..train.checkpoint import save_checkpoint

    check_choice("to", to, ("s4d", "rtf"))
    out = Path(out)
    if out.exists():
        raise ValueError(f"out {str(out)!r} already exists; reduce never overwrites a folder: choose a new one")
    model, config, task = load_model(run)
    l_max = max(1, task.max_len)
    new_model, reports = reduce_model(model, order, tolerance=tolerance, to=to, l_max=l_max, n_grid=n_grid)
    d_states = {r.d_state for r in reports.values()}
    if len(d_states) != 1:  # pragma: no cover - one order for the model gives one state size
        raise ValueError(f"reduced layers have different state sizes {sorted(d_states)}")
    cfg = config.to_dict()
    cfg.update(layer=to, d_state=d_states.pop(), init_from="",
               layer_options={"discretization": "zoh"} if to == "s4d" else {"l_max": l_max})
    new_config = TrainConfig.from_dict(cfg)
    source_order = max(int(getattr(m, "d_state", 0)) for n, m in model.named_modules() if n in reports)
    record = {"source": str(Path(run).resolve()), "source_layer": config.layer, "source_d_state": config.d_state,
              "source_order": source_order, "order": int(max(int(r.orders.max()) for r in reports.values())),
              "requested_order": order, "tolerance": tolerance, "target": to, "d_state": new_config.d_state,
              "layers": {n: {**r.summary(), "hsv": r.hsv.tolist()} for n, r in reports.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_checkpoint(tmp, 0, new_model, {"reduced_from": record["source"]}, new_config.to_dict())
        (tmp / "reduction.json").write_text(json.dumps(record, indent=1))
        if out.exists():
            raise ValueError(f"out {str(out)!r} appeared while reducing; reduce never overwrites a folder")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record
