"""Subcommands of the ``ssmkit`` CLI: each module defines ``add_parser(subparsers)`` and ``run(args)``."""
