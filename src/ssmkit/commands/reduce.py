"""``ssmkit reduce``: shrink a trained run's S4 / S4D / RTF layers by balanced truncation into a
new run folder (that ``evaluate``, ``generate`` and ``inspect`` accept), reporting the H∞ error
bound 2·Σ(discarded Hankel singular values) beside the measured error."""
from __future__ import annotations

from ..inspection import reduce_run


def add_parser(sub) -> None:
    p = sub.add_parser("reduce", help="balanced truncation of a run's LTI layers into a new run", description=__doc__)
    p.add_argument("run", help="run folder or ckpt-* folder of an S4, S4D or RTF model")
    p.add_argument("--out", required=True, help="new run folder (must not exist)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--order", type=int, help="states kept per channel")
    g.add_argument("--tolerance", type=float, help="smallest order whose error bound is at most this in every channel")
    p.add_argument("--to", default="s4d", choices=("s4d", "rtf"), help="layer of the reduced model (default s4d)")


def run(args) -> int:
    rec = reduce_run(args.run, args.out, order=args.order, tolerance=args.tolerance, to=args.to)
    print(f"reduced {rec['source_layer']} (state {rec['source_order']}) -> {rec['target']} of order {rec['order']} "
          f"(d_state {rec['d_state']})")
    for name, r in rec["layers"].items():
        orders = r["orders"]
        print(f"  {name}: orders {min(orders)}-{max(orders)}, H∞ bound max {r['max_bound']:.4g}, "
              f"measured max {r['max_error']:.4g}")
    print(f"new run: {args.out}")
    return 0
