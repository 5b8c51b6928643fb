"""``ssmkit hippo``: compress a signal with HiPPO memories and plot the reconstruction.

The classic HiPPO figure (Gu et al. 2020, Fig. 1/3): the input, its reconstruction from the
N coefficients held at the end of the stream, and the error over the history; plus a table of
the reconstruction MSE (relative to the signal's variance) per measure.
"""
from __future__ import annotations

from pathlib import Path

from ..hippo import MEASURES
from ..reconstruction import format_mse_table, hippo_figure
from ..signals import SIGNALS


def add_parser(sub) -> None:
    p = sub.add_parser("hippo", help="compress a signal with HiPPO and plot its reconstruction",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--measure", nargs="+", default=["legt", "legs", "lagt", "fout"], metavar="M",
                   help=f"measures to compare ({', '.join(MEASURES)}); default: legt legs lagt fout")
    p.add_argument("-N", type=int, default=64, help="number of coefficients (default 64)")
    p.add_argument("--length", type=int, default=10_000, help="samples in a built-in signal (default 10000)")
    p.add_argument("--signal", default="whitenoise", help=f"{', '.join(SIGNALS)} or FILE.csv (default whitenoise)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/hippo", help="output folder (default runs/hippo)")


def run(args) -> int:
    if args.length < 2:
        raise ValueError(f"--length must be >= 2, got {args.length}")
    results = hippo_figure(args.out, args.measure, args.N, args.length, args.signal, args.seed)
    print(format_mse_table(results))
    print(f"wrote {Path(args.out) / 'reconstruction.png'}")
    return 0
