"""Run one measurement of this checkout and of an earlier commit side by side.

Two versions of ssmkit cannot be imported into one process, so each measurement runs in a
child process whose PYTHONPATH points at either this checkout's ``src`` or a copy of the
baseline commit's ``src`` (extracted with ``git archive`` into a temporary folder). The
parent alternates the two versions, and which goes first alternates by round (new, old, old,
new, ...), so that a change in the machine's load, or an advantage of running first, affects
both alike; it reports the ratio of medians.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
# the last landed code before the end-to-end speed work (override with --baseline COMMIT)
BASELINE = "619a943"


def extract(commit: str) -> Path:
    """``src/`` of ``commit`` in a temporary folder (kept for the life of the process)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"ssmkit-{commit}-"))
    archive = tmp / "src.tar"
    with open(archive, "wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", commit, "src"], stdout=f, check=True)
    with tarfile.open(archive) as t:
        t.extractall(tmp, filter="data")
    return tmp / "src"


def run_worker(script: Path, src: Path, args: Dict[str, object], threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=str(threads), BENCH_THREADS=str(threads))
    cmd = [sys.executable, str(script), "--worker", json.dumps(args)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(script: Path, configs: List[Dict[str, object]], key: str, baseline: str, rounds: int, threads: int):
    """Yield (config, new_median, old_median) for each config; larger ``key`` is better."""
    old_src = extract(baseline)
    new_src = ROOT / "src"
    for cfg in configs:
        vals = {"new": [], "old": []}
        err = {}
        for i in range(rounds):
            order = (("new", new_src), ("old", old_src))
            for name, src in (order if i % 2 == 0 else order[::-1]):  # who goes first alternates by round
                r = run_worker(script, src, cfg, threads)
                if "error" in r:
                    err[name] = r["error"]
                else:
                    vals[name].append(r[key])
        med = {k: (statistics.median(v) if v else float("nan")) for k, v in vals.items()}
        yield cfg, med["new"], med["old"], err
