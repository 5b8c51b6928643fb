"""``ssmkit recipes``: the training recipes shipped with ssmkit (use one with ``train --recipe NAME``)."""
from __future__ import annotations

from ..train.recipes import load_recipe
from .train import _list_recipes


def add_parser(sub) -> None:
    p = sub.add_parser("recipes", help="list the shipped training recipes", description=__doc__)
    p.add_argument("name", nargs="?", help="print this recipe's YAML options")


def run(args) -> int:
    if args.name:
        import yaml

        desc, data = load_recipe(args.name)
        print(f"# {desc}")
        print(yaml.safe_dump(data, sort_keys=False).rstrip())
        return 0
    print(_list_recipes())
    return 0
