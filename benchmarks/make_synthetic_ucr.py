"""Write generated UCR-style datasets in the UCR 2018 layout (DIR/NAME/NAME_TRAIN.tsv, _TEST.tsv).

No UCR/UEA archive is installed with ssmkit's dependencies, and nothing is downloaded; two of
the archive's datasets are themselves synthetic, defined by a published generator, so they can
be drawn afresh here (new random draws, not the archive's files, so the archive's published
error rates do not apply exactly; compare with the 1-NN baseline computed on the same data):

- ``SyntheticControl`` (Alcock & Manolopoulos 1999; length 60, 6 classes, 300/300 as in the
  archive): normal, cyclic, increasing and decreasing trend, upward and downward shift, around
  a mean of 30 with uniform noise of +-6.
- ``CBF`` (Cylinder-Bell-Funnel, Saito 1994; length 128, 3 classes, 30/900 as in the archive):
  a plateau, a rising ramp or a falling ramp of height 6 + N(0,1) on a random interval
  [a, b], a ~ U[16, 32], b - a ~ U[32, 96], plus N(0, 1) noise at every point.
- ``CBF1024``: the same generator stretched 8x (length 1,024; a ~ U[128, 256],
  b - a ~ U[256, 768]), 300/300: a long-series variant that is NOT an archive dataset.

Usage: python benchmarks/make_synthetic_ucr.py OUT_DIR [--seed 0]
then:  ssmkit train --recipe ucr --task-opt archive=OUT_DIR --task-opt dataset=CBF --out runs/cbf
"""
from __future__ import annotations

import argparse
import os

import numpy as np


def synthetic_control(n: int, rng: np.random.Generator, length: int = 60):
    t = np.arange(length)
    y = np.arange(n) % 6
    x = 30.0 + rng.uniform(-3, 3, (n, length)) * 2.0
    for i, c in enumerate(y):
        if c == 1:
            x[i] += rng.uniform(10, 15) * np.sin(2 * np.pi * t / rng.uniform(10, 15))
        elif c in (2, 3):
            x[i] += (1 if c == 2 else -1) * rng.uniform(0.2, 0.5) * t
        elif c in (4, 5):
            t3 = rng.uniform(length / 3, 2 * length / 3)
            x[i] += (1 if c == 4 else -1) * (t >= t3) * rng.uniform(7.5, 20)
    return x, y + 1


def cbf(n: int, rng: np.random.Generator, stretch: int = 1):
    length = 128 * stretch
    t = np.arange(length)
    y = np.arange(n) % 3
    x = rng.standard_normal((n, length))
    for i, c in enumerate(y):
        a = rng.uniform(16, 32) * stretch
        b = a + rng.uniform(32, 96) * stretch
        on = (t >= a) & (t <= b)
        h = 6.0 + rng.standard_normal()
        shape = {0: np.ones(length), 1: (t - a) / (b - a), 2: (b - t) / (b - a)}[c]
        x[i] += h * on * shape
    return x, y + 1


DATASETS = {
    "SyntheticControl": (lambda n, g: synthetic_control(n, g), 300, 300),
    "CBF": (lambda n, g: cbf(n, g), 30, 900),
    "CBF1024": (lambda n, g: cbf(n, g, stretch=8), 300, 300),
}


def write(out: str, name: str, seed: int) -> None:
    make, n_train, n_test = DATASETS[name]
    os.makedirs(os.path.join(out, name), exist_ok=True)
    for split, n, s in (("TRAIN", n_train, 0), ("TEST", n_test, 1)):
        x, y = make(n, np.random.default_rng([seed, s, len(name)]))
        order = np.random.default_rng([seed, s, 7]).permutation(n)
        path = os.path.join(out, name, f"{name}_{split}.tsv")
        with open(path + ".tmp", "w") as f:
            for i in order:
                f.write("\t".join([str(int(y[i]))] + [f"{v:.6g}" for v in x[i]]) + "\n")
        os.replace(path + ".tmp", path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--datasets", nargs="*", default=list(DATASETS))
    a = p.parse_args()
    for name in a.datasets:
        write(a.out, name, a.seed)
        print(f"wrote {a.out}/{name}/{name}_TRAIN.tsv and _TEST.tsv")


if __name__ == "__main__":
    main()
