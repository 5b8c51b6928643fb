"""CPU threads and OpenMP waiting: the one place where ssmkit decides them.

Two knobs decide how a CPU run behaves when other processes share the cores:

- **the thread count** of torch's intra-op pool. ssmkit's native selective-scan kernel reads
  ``torch.get_num_threads()`` at every call, so it never runs more threads than torch does;
  it is compiled against ``libgomp.so.1`` and, because torch has already loaded its own copy
  under that name, the dynamic loader binds the kernel to torch's OpenMP runtime: one runtime
  and one pool of worker threads per process (``openmp_runtimes()`` lists what is loaded);
- **what an idle OpenMP worker does** between two parallel regions. GNU OpenMP's default is
  to spin on the CPU for a while (about 300,000 iterations) before sleeping. On an idle
  machine that saves the wake-up latency; on a loaded one each of a pool's threads burns its
  time slice spinning while the thread it waits for is not scheduled, and a run with two
  threads can become many times slower than its share of the cores, not two.
  ``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT`` / ``KMP_BLOCKTIME`` choose this, and the OpenMP
  runtime reads them once, when it is loaded, i.e. when torch is imported.

Policies (``SSMKIT_WAIT_POLICY``; docs/performance.md has the measurements behind the default):

- ``"passive"`` (default): an idle worker sleeps at once — ``OMP_WAIT_POLICY=PASSIVE``. Next
  to other CPU-bound processes, 2-thread training ran 4-9x faster than with the runtime's
  default and faster than 1 thread;
- ``"short"``: spin briefly, then sleep — ``GOMP_SPINCOUNT=10000`` (GNU OpenMP) and
  ``KMP_BLOCKTIME=1`` (milliseconds, Intel OpenMP); in between the two;
- ``"default"``: leave the OpenMP runtime's own default (set nothing).

``import ssmkit`` calls :func:`apply_env_defaults` before it imports torch. It only fills in
variables the user has not set (if any of the three is set, it sets none of them, so a user's
``OMP_WAIT_POLICY=ACTIVE`` is never overridden by a spin count), and it does nothing when torch
was imported before ssmkit (the runtime has already read its settings then; set the variables
in the shell instead). ``SSMKIT_WAIT_POLICY=default`` turns it off.

``SSMKIT_THREADS`` (``auto`` or a positive integer), if set, is applied at import with
:func:`configure`; otherwise library users keep torch's own thread count and the command line
applies ``--threads``. :func:`configure` can be called at any time.

A third knob decides what happens to **large freed blocks of memory** (``SSMKIT_MALLOC``,
:func:`keep_freed_memory`). glibc's malloc serves every block above its mmap threshold (at most
32 MB) from a fresh mapping and returns it to the system when it is freed, so every large tensor
a forward pass allocates (a (4, 2048, 3072) float32 projection is 100 MB) is page-faulted and
zeroed by the kernel again, 4 kB at a time. ``"keep"`` (default on glibc) serves them from the
heap and keeps freed memory for reuse, as a caching allocator does: a Mamba layer's forward at
(4, 2048, 768) ran 8% faster, a Mamba-2 layer's 22% (docs/performance.md). The price: the process keeps its peak
memory until it exits. ``SSMKIT_MALLOC=default`` leaves glibc's behaviour alone.
"""
from __future__ import annotations

import ctypes
import math
import os
import sys
from typing import Dict, List, MutableMapping, Optional, Union

__all__ = ["WAIT_POLICIES", "DEFAULT_WAIT_POLICY", "WAIT_ENV_VARS", "wait_policy_env", "apply_env_defaults",
           "available_cpus", "resolve_threads", "configure", "openmp_runtimes", "status", "MALLOC_POLICIES",
           "keep_freed_memory", "apply_malloc_policy", "huge_page_buffer"]

#: Environment variables that choose how OpenMP workers wait (GNU and Intel runtimes).
WAIT_ENV_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")

WAIT_POLICIES: Dict[str, Dict[str, str]] = {
    "short": {"GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "1"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "default": {},
}
DEFAULT_WAIT_POLICY = "passive"

#: What the last apply_env_defaults() call in this process set (empty if nothing).
applied: Dict[str, str] = {}


def wait_policy_env(policy: str) -> Dict[str, str]:
    """The environment variables that select ``policy`` (one of ``WAIT_POLICIES``)."""
    if not isinstance(policy, str) or policy.strip().lower() not in WAIT_POLICIES:
        raise ValueError(f"wait_policy must be one of {sorted(WAIT_POLICIES)}, got {policy!r}")
    return dict(WAIT_POLICIES[policy.strip().lower()])


def apply_env_defaults(environ: Optional[MutableMapping[str, str]] = None,
                       policy: Optional[str] = None) -> Dict[str, str]:
    """Fill in the OpenMP waiting variables for ``policy`` (default: ``$SSMKIT_WAIT_POLICY``,
    else ``"passive"``) where the user has set none of ``WAIT_ENV_VARS``; return what was set.

    Acting on ``os.environ`` (the default), it sets nothing once torch is imported, since the
    OpenMP runtime has then already read its settings."""
    env = os.environ if environ is None else environ
    if policy is None:
        policy = env.get("SSMKIT_WAIT_POLICY", "").strip() or DEFAULT_WAIT_POLICY
        if policy.lower() not in WAIT_POLICIES:
            raise ValueError(f"SSMKIT_WAIT_POLICY must be one of {sorted(WAIT_POLICIES)}, got {policy!r}")
    wanted = wait_policy_env(policy)
    if environ is None and "torch" in sys.modules:
        return {}
    if any(k in env for k in WAIT_ENV_VARS):
        return {}
    for k, v in wanted.items():
        env[k] = v
    if environ is None:
        applied.clear()
        applied.update(wanted)
    return wanted


#: Choices of ``SSMKIT_MALLOC``: keep freed memory for reuse (default), or glibc's own behaviour.
MALLOC_POLICIES = ("keep", "default")
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
_GLIBC_MMAP_MAX, _GLIBC_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's defaults

#: The malloc policy ssmkit applied ("keep", "default"; None: none, or the C library has no mallopt).
malloc_policy: Optional[str] = None


def keep_freed_memory(keep: bool = True) -> bool:
    """Make glibc's malloc serve large blocks from its heap and keep freed memory for reuse
    (``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, 2**31 - 1)``), so that a large
    tensor allocated again after being freed is not page-faulted and zeroed by the kernel again;
    ``keep=False`` restores glibc's defaults. Returns False (and changes nothing) where the C
    library has no ``mallopt`` or refuses it (not glibc)."""
    global malloc_policy
    from ._checks import check_bool  # here, not at the top: this module loads before torch

    check_bool("keep", keep)
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if keep:
        ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1
    else:
        ok = mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX) == 1 and mallopt(_M_TRIM_THRESHOLD, _GLIBC_TRIM_THRESHOLD) == 1
    if ok:
        malloc_policy = "keep" if keep else "default"
    return ok


def apply_malloc_policy(environ: Optional[MutableMapping[str, str]] = None) -> Optional[str]:
    """Apply ``$SSMKIT_MALLOC`` (``keep``, the default, or ``default``): ``keep`` calls
    :func:`keep_freed_memory`; ``default`` leaves malloc as glibc set it (undoing an earlier
    ``keep``). Returns the policy applied, or None where the C library does not support it."""
    env = os.environ if environ is None else environ
    policy = env.get("SSMKIT_MALLOC", "").strip().lower() or "keep"
    if policy not in MALLOC_POLICIES:
        raise ValueError(f"SSMKIT_MALLOC must be one of {list(MALLOC_POLICIES)}, got {env.get('SSMKIT_MALLOC')!r}")
    global malloc_policy
    if policy == "default" and malloc_policy != "keep":  # nothing to undo
        malloc_policy = "default"
        return "default"
    return policy if keep_freed_memory(policy == "keep") else None


def huge_page_buffer(nbytes: int):
    """A uint8 CPU tensor of ``nbytes`` starting at a 2 MB boundary of a fresh anonymous mapping
    that is advised for transparent huge pages (Linux ``madvise(MADV_HUGEPAGE)``; effective when
    the system's setting is ``madvise`` or ``always``). Streaming through memory mapped with
    2 MB pages takes far fewer TLB misses than with 4 kB pages. Elsewhere: ``torch.empty``."""
    import mmap

    import torch

    from ._checks import check_positive_int

    check_positive_int("nbytes", nbytes)
    huge = 2 << 20
    if sys.platform != "linux" or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(nbytes, dtype=torch.uint8)
    mm = mmap.mmap(-1, nbytes + huge, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        mm.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # transparent huge pages disabled or unsupported: ordinary pages
        pass
    whole = torch.frombuffer(mm, dtype=torch.uint8)  # keeps the mapping alive
    start = (-whole.data_ptr()) % huge
    return whole[start:start + nbytes]


def _cgroup_cpus() -> Optional[float]:
    """CPUs allowed by a cgroup CPU quota (v2 ``cpu.max`` or v1 ``cfs_quota_us``), if any."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def resolve_threads(threads: Union[str, int, None]) -> int:
    """``"auto"`` (or None) -> ``available_cpus()``; a positive int -> itself (also as a string)."""
    if threads is None or (isinstance(threads, str) and threads.strip().lower() == "auto"):
        return available_cpus()
    if isinstance(threads, str):
        try:
            threads = int(threads.strip())
        except ValueError:
            raise ValueError(f"threads must be 'auto' or a positive integer, got {threads!r}") from None
    from ._checks import check_positive_int  # here, not at the top: this module loads before torch

    return check_positive_int("threads", threads)


def configure(threads: Union[str, int, None] = "auto") -> Dict[str, object]:
    """Set the number of CPU threads torch (and so ssmkit's native kernel) uses; return ``status()``.

    ``threads``: ``"auto"`` (the CPUs available to the process, see ``available_cpus``) or a
    positive integer. The native selective-scan kernel reads ``torch.get_num_threads()`` at
    each call, so it follows. How idle threads wait cannot be changed here (the OpenMP runtime
    read it when torch was imported); see ``SSMKIT_WAIT_POLICY`` and ``apply_env_defaults``."""
    import torch

    n = resolve_threads(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return status()


def openmp_runtimes() -> List[str]:
    """Paths of the OpenMP runtime libraries mapped into this process (Linux; else empty)."""
    names = ("libgomp", "libiomp", "libomp")
    found = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split(None, 5)[-1].strip() if line.count(" ") >= 5 else ""
                if any(os.path.basename(path).startswith(n) for n in names) and path not in found:
                    found.append(path)
    except OSError:
        pass
    return found


def status() -> Dict[str, object]:
    """What is in effect: torch's thread count, the waiting variables, the OpenMP runtimes loaded,
    the malloc policy ssmkit set (``keep``, ``default`` or None)."""
    import torch

    return {"threads": torch.get_num_threads(), "available_cpus": available_cpus(),
            "wait_env": {k: os.environ[k] for k in WAIT_ENV_VARS if k in os.environ},
            "set_by_ssmkit": dict(applied), "openmp_runtimes": openmp_runtimes(), "malloc": malloc_policy}
