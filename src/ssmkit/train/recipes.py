"""Recipes: YAML files of :class:`TrainConfig` fields shipped in ``ssmkit/recipes/``, each with
a ``description``. ``ssmkit train --recipe NAME`` starts from one; flags override it."""
from __future__ import annotations

from importlib import resources
from typing import Any, Dict, Tuple

from .config import ConfigError, _parse_yaml

__all__ = ["available_recipes", "load_recipe"]


def _files():
    return {p.name[: -len(".yaml")]: p for p in resources.files("ssmkit.recipes").iterdir() if p.name.endswith(".yaml")}


def available_recipes() -> Dict[str, str]:
    """Recipe names and their descriptions."""
    return {name: load_recipe(name)[0] for name in sorted(_files())}


def load_recipe(name: str) -> Tuple[str, Dict[str, Any]]:
    """``(description, config fields)`` of the recipe ``name``."""
    files = _files()
    if not isinstance(name, str) or name not in files:
        raise ValueError(f"unknown recipe {name!r}; expected one of {', '.join(sorted(files))}")
    data = _parse_yaml(files[name].read_text(), f"recipe {name!r}")
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {name!r} must hold a mapping of options")
    description = str(data.pop("description", "")).strip()
    return description, data
