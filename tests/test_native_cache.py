"""The native kernel's cache: a verified build is used (also with no compiler on PATH); a
truncated or foreign library is never loaded (it would kill the process with SIGBUS) but
rebuilt, or the torch path is used with a one-line warning when nothing can be built.

Each scenario runs in a fresh interpreter (the library is loaded once per process) with
SSMKIT_CACHE_DIR pointing at a temporary folder."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ssmkit.ops import _native

SRC = str(Path(__file__).resolve().parents[1] / "src")

needs_native = pytest.mark.skipif(not _native.available(),
                                  reason="native CPU kernel unavailable (no C compiler or SSMKIT_NATIVE=0)")

# Runs in the child, for each scenario in turn (the loader's per-process state is reset between
# them, as in a fresh process): point the cache at the scenario's folder, optionally corrupt the
# cached library and rebuild it through _locate() (nothing is loaded before verification), then
# ask for the kernel and compare the scan with the reference.
CHILD = r"""
import json, os, sys, warnings
import torch
torch.set_num_threads(1)
from ssmkit.ops import _native, selective_scan, selective_scan_ref
g = torch.Generator().manual_seed(0)
u, delta = torch.randn(2, 4, 9, generator=g, dtype=torch.float64), torch.randn(2, 4, 9, generator=g, dtype=torch.float64)
A = -torch.rand(4, 3, generator=g, dtype=torch.float64)
B, C = torch.randn(2, 3, 9, generator=g, dtype=torch.float64), torch.randn(2, 2, 3, 9, generator=g, dtype=torch.float64)
ref = selective_scan_ref(u, delta, A, B, C, delta_softplus=True)
reports = []
for cache, corruptions in json.loads(sys.argv[1]):
    os.environ["SSMKIT_CACHE_DIR"] = cache
    _native._tried, _native._lib = False, None
    report = {"rebuilt": []}
    lib_path, sum_path = _native._paths()
    for corruption in corruptions:
        size = lib_path.stat().st_size
        if corruption == "truncate":
            with open(lib_path, "r+b") as f:
                f.truncate(size // 3)
        elif corruption == "foreign":
            lib_path.write_bytes(os.urandom(size))
        assert not _native._verified(lib_path, sum_path)
        _native._locate()
        report["rebuilt"].append([_native._verified(lib_path, sum_path), lib_path.stat().st_size])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report["available"] = _native.available()
        y = selective_scan(u, delta, A, B, C, delta_softplus=True)
    report["warnings"] = [str(w.message) for w in caught]
    report["error"] = float((y - ref).abs().max() / ref.abs().max())
    reports.append(report)
print(json.dumps(reports))
"""


def _run(scenarios, compiler: bool = True, tmp: Path = None) -> list:
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "SSMKIT_NATIVE")}
    env.update(PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    if not compiler:
        empty = tmp / "empty-bin"
        empty.mkdir(exist_ok=True)
        env["PATH"] = str(empty)  # no gcc, no cc; CC unset
    arg = json.dumps([[str(c), list(k)] for c, k in scenarios])
    r = subprocess.run([sys.executable, "-c", CHILD, arg], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"child died (rc {r.returncode}): {r.stderr[-2000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def _seed_cache(cache: Path) -> tuple:
    """Copy this process's verified build (and its checksum) into ``cache``."""
    assert _native.available()
    lib_path, sum_path = _native._paths()
    assert _native._verified(lib_path, sum_path)
    cache.mkdir()
    shutil.copy(lib_path, cache / lib_path.name)
    shutil.copy(sum_path, cache / sum_path.name)
    return cache / lib_path.name, lib_path.stat().st_size


@needs_native
def test_truncated_and_foreign_libraries_are_rebuilt(tmp_path):
    cache = tmp_path / "cache"
    lib, size = _seed_cache(cache)
    (rep,) = _run([(cache, ["truncate", "foreign"])])
    assert rep["rebuilt"] == [[True, size], [True, size]]
    assert rep["available"] and not rep["warnings"]
    assert rep["error"] < 1e-12


@needs_native
def test_without_a_compiler_a_verified_build_is_used_and_nothing_else(tmp_path):
    """No compiler on PATH (CC unset): a verified cached build is loaded; an empty cache, a
    truncated library or one without its checksum is not loaded, and the torch path is used
    with a one-line warning."""
    scenarios = {}
    for state in ("verified", "empty", "truncated", "no checksum"):
        cache = tmp_path / state.replace(" ", "-")
        scenarios[state] = cache
        if state == "empty":
            cache.mkdir()
            continue
        lib, size = _seed_cache(cache)
        if state == "truncated":
            with open(lib, "r+b") as f:
                f.truncate(size // 3)
        elif state == "no checksum":
            Path(str(lib) + ".sha256").unlink()
    reports = dict(zip(scenarios, _run([(c, []) for c in scenarios.values()], compiler=False, tmp=tmp_path)))
    assert reports["verified"]["available"] and not reports["verified"]["warnings"]
    for state in ("empty", "truncated", "no checksum"):
        rep = reports[state]
        assert not rep["available"], state
        (w,) = rep["warnings"]
        assert "torch path" in w and "compiler" in w and "\n" not in w, (state, w)
    assert all(rep["error"] < 1e-12 for rep in reports.values())
