"""ssmkit.runtime: thread count, OpenMP waiting defaults, one OpenMP pool for torch and the native kernel.

Settings the OpenMP runtime reads at load time are checked in fresh subprocesses (with a clean
environment), through the runtime's own report (``OMP_DISPLAY_ENV``), not just os.environ."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import raises_naming
from ssmkit import runtime
from ssmkit.ops import _native, selective_scan

SRC = str(Path(__file__).resolve().parent.parent / "src")


def run_py(code: str, **env_over) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in runtime.WAIT_ENV_VARS and not k.startswith("SSMKIT_") and k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = SRC
    for k, v in env_over.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def gomp_spincount(stderr: str) -> str:
    """The spin count GNU OpenMP reports it is using (OMP_DISPLAY_ENV=VERBOSE)."""
    lines = [ln for ln in stderr.splitlines() if "GOMP_SPINCOUNT" in ln]
    assert lines, "the OpenMP runtime did not report GOMP_SPINCOUNT"
    return lines[0].split("=")[1].strip().strip("'")


def test_apply_env_defaults_fills_only_unset_variables():
    env = {}
    assert runtime.apply_env_defaults(env) == runtime.WAIT_POLICIES[runtime.DEFAULT_WAIT_POLICY] == env
    assert env  # the default policy sets something
    # any user setting of the waiting variables wins, and nothing else is added beside it
    for var, val in [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "5"), ("KMP_BLOCKTIME", "200")]:
        env = {var: val}
        assert runtime.apply_env_defaults(env) == {} and env == {var: val}
    env = {"SSMKIT_WAIT_POLICY": "short"}
    runtime.apply_env_defaults(env)
    assert env == {"SSMKIT_WAIT_POLICY": "short", "GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "1"}
    env = {"SSMKIT_WAIT_POLICY": "default"}
    assert runtime.apply_env_defaults(env) == {} and env == {"SSMKIT_WAIT_POLICY": "default"}
    with raises_naming(ValueError, "SSMKIT_WAIT_POLICY"):
        runtime.apply_env_defaults({"SSMKIT_WAIT_POLICY": "fast"})
    with raises_naming(ValueError, "wait_policy"):
        runtime.wait_policy_env("fast")


def test_import_does_not_touch_the_environment_once_torch_is_loaded(monkeypatch):
    # torch is imported in this process: its OpenMP runtime has read its settings already
    for k in runtime.WAIT_ENV_VARS:
        monkeypatch.delenv(k, raising=False)
    assert runtime.apply_env_defaults() == {}
    assert not any(k in os.environ for k in runtime.WAIT_ENV_VARS)


def test_import_keeps_the_users_choice_and_applies_ssmkit_threads():
    r = run_py("import ssmkit; print(ssmkit.runtime.status()['threads'])",
               OMP_DISPLAY_ENV="VERBOSE", OMP_WAIT_POLICY="ACTIVE", SSMKIT_THREADS="1")
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in r.stderr and gomp_spincount(r.stderr) not in ("0", "10000")
    assert r.stdout.split()[-1] == "1"


def test_configure_sets_torch_threads_and_the_native_kernel_follows(monkeypatch):
    n0 = torch.get_num_threads()
    try:
        assert runtime.configure(1)["threads"] == 1 and torch.get_num_threads() == 1
        assert runtime.configure("auto")["threads"] == runtime.available_cpus() == torch.get_num_threads()
        assert runtime.configure("1")["threads"] == 1
        if not _native.available():
            pytest.skip("native kernel not built on this machine")
        lib = _native.library()
        seen = []

        class Spy:  # records the thread count each native call receives
            def __getattr__(self, name):
                fn = getattr(lib, name)
                return lambda *args: (seen.append((name, args[-1])), fn(*args))[1]

        monkeypatch.setattr(_native, "library", lambda: Spy())
        b, d, L, N = 2, 16, 12, 4
        u = torch.randn(b, d, L, requires_grad=True)
        for threads in (1, 2):
            runtime.configure(threads)
            seen.clear()
            selective_scan(u, torch.rand(b, d, L), -torch.rand(d, N), torch.randn(b, N, L),
                           torch.randn(b, N, L), native=True).sum().backward()
            assert {name[:7] for name, _ in seen} == {"ssm_fwd", "ssm_bwd"}
            assert all(1 <= t <= threads for _, t in seen), seen
    finally:
        torch.set_num_threads(n0)
    with raises_naming(ValueError, "threads"):
        runtime.configure(0)
    with raises_naming(TypeError, "threads"):
        runtime.configure(2.0)
    with raises_naming(ValueError, "threads"):
        runtime.resolve_threads("many")


THREADS_SCRIPT = r"""
import json, os, ssmkit, torch  # ssmkit first: its import sets the OpenMP defaults
from ssmkit import runtime
from ssmkit.ops import _native, selective_scan
def tasks(): return len(os.listdir("/proc/self/task"))
def scan():
    b, d, L, N = 4, 64, 64, 8
    u = torch.randn(b, d, L, requires_grad=True)
    selective_scan(u, torch.rand(b, d, L), -torch.rand(d, N), torch.randn(b, N, L), torch.randn(b, N, L),
                   native=True).sum().backward()
out = {"native": _native.available()}
runtime.configure(1)
x = torch.randn(1 << 20); (x.exp() + x).sum(); torch.randn(128, 128) @ torch.randn(128, 128)
out["t1_before"] = tasks(); scan(); scan(); out["t1_after"] = tasks()
runtime.configure(2)
(x.exp() + x).sum(); torch.randn(128, 128) @ torch.randn(128, 128)
out["t2_before"] = tasks(); scan(); scan(); out["t2_after"] = tasks()
out["runtimes"] = runtime.openmp_runtimes()
print(json.dumps(out))
"""


def test_clean_import_sets_the_default_and_the_native_kernel_uses_torchs_openmp_pool():
    """In a clean environment the OpenMP runtime itself reports the spin count ssmkit's default
    chose. One OpenMP runtime is loaded, and a native scan (forward + backward) starts no thread
    beyond those torch's pool already has: not at 1 thread (no pool at all), not at 2."""
    r = run_py(THREADS_SCRIPT, OMP_DISPLAY_ENV="VERBOSE")
    want = runtime.WAIT_POLICIES[runtime.DEFAULT_WAIT_POLICY].get("GOMP_SPINCOUNT", "0")
    assert gomp_spincount(r.stderr) == want != "300000"
    out = json.loads(r.stdout.splitlines()[-1])
    if not out["native"]:
        pytest.skip("native kernel not built on this machine")
    assert len(out["runtimes"]) == 1, out["runtimes"]
    assert out["t1_after"] == out["t1_before"], out
    assert out["t2_after"] == out["t2_before"], out


# --- malloc policy -----------------------------------------------------------------------------

RSS_SCRIPT = """
import json, ssmkit, torch
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) * 1024
before = rss()
x = torch.ones(64 * 2 ** 20)  # 256 MB, every page touched
held = rss()
del x
print(json.dumps(dict(malloc=ssmkit.runtime.status()['malloc'], before=before, held=held, after=rss())))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists() or sys.platform != "linux", reason="needs Linux /proc")
@pytest.mark.parametrize("policy", ["keep", "default"])
def test_malloc_policy_keeps_freed_memory_for_reuse_or_returns_it(policy):
    """``keep`` (the import default): a freed 256 MB tensor stays in the process for the next
    allocation (resident memory does not drop); ``default``: glibc unmaps it (it drops)."""
    out = json.loads(run_py(RSS_SCRIPT, SSMKIT_MALLOC=None if policy == "keep" else "default").stdout.splitlines()[-1])
    if out["malloc"] is None:
        pytest.skip("the C library has no mallopt (not glibc)")
    assert out["malloc"] == policy
    assert out["held"] - out["before"] > 200 * 2 ** 20, out
    freed = out["held"] - out["after"]
    if policy == "keep":
        assert freed < 16 * 2 ** 20, out
    else:
        assert freed > 200 * 2 ** 20, out


def test_malloc_policy_errors_name_the_setting():
    with pytest.raises(ValueError, match="SSMKIT_MALLOC"):
        runtime.apply_malloc_policy({"SSMKIT_MALLOC": "sometimes"})
    with raises_naming(TypeError, "keep"):
        runtime.keep_freed_memory("yes")
    was = runtime.malloc_policy
    try:
        assert runtime.apply_malloc_policy({"SSMKIT_MALLOC": "default"}) in ("default", None)
        assert runtime.status()["malloc"] in ("default", None)
    finally:
        if was == "keep":
            assert runtime.apply_malloc_policy({}) == "keep" == runtime.status()["malloc"]
