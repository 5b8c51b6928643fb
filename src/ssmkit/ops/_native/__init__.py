"""Native CPU kernels (plain C99 + OpenMP), compiled on first use and loaded with ctypes.

The C source ships with the package. On first use it is compiled with the system C compiler
(``gcc`` unless ``CC`` says otherwise) into a per-user cache directory
(``$XDG_CACHE_HOME/ssmkit`` or ``~/.cache/ssmkit``; ``SSMKIT_CACHE_DIR`` overrides), under a
name keyed by a hash of the source, the compile flags, the machine and its CPU features
(``-march=native`` makes the binary CPU-specific). The key does not involve the compiler, so a
kernel built once is found again on a machine where no compiler is on ``PATH``.

Integrity of the cache: the library is compiled in a temporary folder, flushed to disk
(``fsync``) and moved into place with ``os.replace`` (a racing process sees nothing or the whole
file); then a sidecar ``<name>.sha256`` holding the SHA-256 of the library is written the same
way. Before loading, the library is hashed and compared with its sidecar: a truncated file
(which would kill the process with SIGBUS when mapped), a foreign file or a missing sidecar is
never loaded; it is rebuilt when a compiler is available, and otherwise the torch path is used.

``available()`` tells whether the library could be built (or found verified) and loaded. If not
(no compiler and no verified cached build, a compilation error, or ``SSMKIT_NATIVE=0`` in the
environment), a one-line warning is issued once (not for ``SSMKIT_NATIVE=0``) and callers use
their torch path instead.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch.autograd import forward_ad as _forward_ad

from ..._checks import _is_compiling
from ..._io import fsync_dir

__all__ = ["available", "library", "cache_dir", "ptr", "kernel", "autograd_needed", "transform_active", "row_view"]

_SRC = Path(__file__).with_name("selective_scan.c")
# every source compiled into the one library: the selective scan, the fused decoding steps, the SSD scan,
# Mamba-2's D skip + gated group RMSNorm, the direct causal convolution of short sequences, the LTI
# blocks' channel mixer, the diagonal SSM's Vandermonde kernel, S4's rank-1 Woodbury step, LayerNorm
_SRCS = (_SRC, Path(__file__).with_name("decode_step.c"), Path(__file__).with_name("ssd_scan.c"),
         Path(__file__).with_name("gated_norm.c"), Path(__file__).with_name("direct_conv.c"),
         Path(__file__).with_name("channel_mixer.c"), Path(__file__).with_name("vandermonde.c"),
         Path(__file__).with_name("woodbury.c"), Path(__file__).with_name("layer_norm.c"))
# headers the sources include (part of the cache key, like the sources)
_HEADERS = (Path(__file__).with_name("native_common.h"),)
# Compile with fast-math so that the exp in the inner loops is vectorised (glibc's libmvec),
# but link without it: on some gcc versions linking a shared object with -ffast-math pulls in
# crtfastmath.o, which flips the whole process to flush-denormals-to-zero at load time.
_CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-std=c99"]
_LDFLAGS = ["-shared", "-fopenmp"]
_LIBS = ["-lm"]
_ABI = 16

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_tried = False
_error: Optional[str] = None


def cache_dir() -> Path:
    """Where compiled kernels are kept."""
    if os.environ.get("SSMKIT_CACHE_DIR"):
        return Path(os.environ["SSMKIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ssmkit"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.strip()
    except OSError:
        pass
    return ""


def _compiler() -> Optional[str]:
    cc = os.environ.get("CC") or "gcc"
    return shutil.which(cc.split()[0]) and cc


def _has_libmvec(cc: str) -> bool:
    """glibc's vector math library (SIMD exp) is linked when it exists (x86-64 / aarch64 glibc)."""
    try:
        out = subprocess.run([*cc.split(), "-print-file-name=libmvec.so"], capture_output=True, text=True,
                             timeout=30)
        return os.path.isabs(out.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return False


def _key() -> str:
    """Cache key: sources and headers, flags, ABI, machine and CPU features (no compiler needed to compute it)."""
    return hashlib.sha256(b"\0".join([
        *(src.read_bytes() for src in _SRCS + _HEADERS), " ".join(_CFLAGS + _LDFLAGS + _LIBS).encode(),
        platform.machine().encode(), _cpu_flags().encode(), str(_ABI).encode(),
    ])).hexdigest()[:16]


def _paths() -> tuple:
    ext = sysconfig.get_config_var("SHLIB_SUFFIX") or ".so"
    out = cache_dir() / f"selective_scan-{_key()}{ext}"
    return out, out.with_name(out.name + ".sha256")


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verified(lib_path: Path, sum_path: Path) -> bool:
    """True if the library exists and its SHA-256 equals the one recorded in its sidecar."""
    try:
        want = sum_path.read_text().strip()
        return len(want) == 64 and _sha256(lib_path) == want
    except (OSError, UnicodeDecodeError):
        return False


def _replace_durably(tmp: str, dest: Path) -> None:
    """fsync ``tmp``, move it onto ``dest`` atomically, fsync the folder."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dest)
    fsync_dir(dest.parent)


def _build(cc: str, out: Path, sidecar: Path) -> None:
    """Compile into ``out`` and record its SHA-256 in ``sidecar`` (both written atomically)."""
    libs = _LIBS + (["-lmvec"] if _has_libmvec(cc) else [])
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        objs = [os.path.join(tmp, src.stem + ".o") for src in _SRCS]
        so = os.path.join(tmp, out.name)
        for cmd in ([[*cc.split(), *_CFLAGS, "-c", str(src), "-o", obj] for src, obj in zip(_SRCS, objs)]
                    + [[*cc.split(), *_LDFLAGS, *objs, "-o", so, *libs]]):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if r.returncode:
                msg = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise RuntimeError(f"`{' '.join(cmd)}` failed: {msg}")
        digest = _sha256(so)
        _replace_durably(so, out)  # a racing process either sees nothing or the full file
        tmp_sum = os.path.join(tmp, sidecar.name)
        with open(tmp_sum, "w") as f:
            f.write(digest + "\n")
        _replace_durably(tmp_sum, sidecar)  # after the library: a sidecar never vouches for a partial file


def _locate() -> Path:
    """A verified library: the cached one if its checksum holds, else a fresh build."""
    out, sidecar = _paths()
    if _verified(out, sidecar):
        return out
    cc = _compiler()
    if cc is None:
        state = "no cached build" if not out.exists() else "the cached build failed its checksum"
        raise RuntimeError(f"no C compiler found (set CC or install gcc) and {state} in {out.parent}")
    for _ in range(3):  # another process may replace the pair between our two writes: check again
        _build(cc, out, sidecar)
        if _verified(out, sidecar):
            return out
    raise RuntimeError(f"the native library {out} keeps changing while it is built (concurrent builds?)")


def _declare(lib: ctypes.CDLL) -> None:
    P, L, I = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    for sfx in ("f32", "f64"):
        f = getattr(lib, f"ssm_fwd_{sfx}")
        f.argtypes = [P] * 9 + [L] * 7 + [I]
        f.restype = None
        f = getattr(lib, f"ssm_bwd_{sfx}")
        f.argtypes = [P] * 17 + [L] * 8 + [I]
        f.restype = None
        # fused Mamba block kernels (ssmkit.ops.mamba_fused)
        f = getattr(lib, f"mi_fwd_{sfx}")
        f.argtypes = [P] * 5 + [L] * 2 + [P] * 2 + [L] + [P] * 5 + [L] * 5 + [I]
        f.restype = None
        f = getattr(lib, f"mi_bwd_{sfx}")
        f.argtypes = ([P] * 5 + [L] * 2 + [P] * 2 + [L] + [P] * 6 + [L] + [P] + [L] + [P] * 7
                      + [L] * 6 + [I])
        f.restype = None
        f = getattr(lib, f"cv_fwd_{sfx}")
        f.argtypes = [P] + [L] + [P] * 4 + [L] * 4 + [I]
        f.restype = None
        f = getattr(lib, f"cv_bwd_{sfx}")
        f.argtypes = [P] + [L] + [P] * 5 + [L] + [P] * 5 + [L] * 4 + [I]
        f.restype = None
        f = getattr(lib, f"cv_fwd_parts_{sfx}")  # pointer arguments past the counts: arrays, one entry per part
        f.argtypes = [P, L, L] + [P] * 6 + [L] * 3 + [I]
        f.restype = None
        f = getattr(lib, f"cv_bwd_parts_{sfx}")
        f.argtypes = [P, L, L] + [P] * 7 + [L] + [P] * 5 + [L] * 3 + [I]
        f.restype = None
        f = getattr(lib, f"lti_fwd_{sfx}")  # time-invariant diagonal scan (ssmkit.ops.scan)
        f.argtypes = [P] * 4 + [L] * 3 + [I] * 2
        f.restype = None
        f = getattr(lib, f"lti_bwd_{sfx}")
        f.argtypes = [P] * 8 + [L] * 3 + [I] * 2
        f.restype = None
        f = getattr(lib, f"ssd_fwd_{sfx}")  # Mamba-2's SSD scan (ssmkit.ops.ssd)
        f.argtypes = [P] * 8 + [L] * 6 + [I]
        f.restype = None
        f = getattr(lib, f"ssd_bwd_{sfx}")
        f.argtypes = [P] * 18 + [L] * 7 + [I]
        f.restype = None
        f = getattr(lib, f"gn_fwd_{sfx}")  # D skip + gated group RMSNorm (ssmkit.ops.gated_norm)
        f.argtypes = [P] * 4 + [L] + [P] * 4 + [L] * 4 + [ctypes.c_double, I, I]
        f.restype = None
        f = getattr(lib, f"gn_bwd_{sfx}")
        f.argtypes = [P] * 4 + [L] + [P] * 10 + [L] * 4 + [I, I]
        f.restype = None
    D = ctypes.c_double
    for sfx in ("f32", "f64"):
        f = getattr(lib, f"mamba_step_{sfx}")
        f.argtypes = [P, L, L] + [P] * 12 + [L] * 5
        f.restype = I
        f = getattr(lib, f"mamba2_step_{sfx}")
        f.argtypes = [P, L, L] + [P] * 11 + [L] * 6 + [D] * 3 + [I]
        f.restype = I
    for name in ("rows_matmul_f32", "rows_matmul_bf16"):
        f = getattr(lib, name)
        f.argtypes = [P] * 4 + [L] * 3 + [I]
        f.restype = I
    lib.mamba_layer_step_f32.argtypes = [P] * 17 + [L] * 6 + [I]
    lib.mamba_layer_step_f32.restype = I
    lib.mamba2_layer_step_f32.argtypes = [P] * 16 + [L] * 7 + [D] * 3 + [I, I]
    lib.mamba2_layer_step_f32.restype = I
    lib.mamba_layer_step_bf16.argtypes = lib.mamba_layer_step_f32.argtypes
    lib.mamba_layer_step_bf16.restype = I
    lib.mamba2_layer_step_bf16.argtypes = lib.mamba2_layer_step_f32.argtypes
    lib.mamba2_layer_step_bf16.restype = I
    lib.add_rms_norm_f32.argtypes = [P] * 4 + [L] * 2 + [D]
    lib.add_rms_norm_f32.restype = None
    lib.dconv_fwd_f32.argtypes = [P] * 3 + [L] * 4 + [I]  # direct causal convolution (ssmkit.ops.fftconv)
    lib.dconv_fwd_f32.restype = I
    lib.dconv_bwd_f32.argtypes = [P] * 5 + [L] * 4 + [I]
    lib.dconv_bwd_f32.restype = I
    lib.mix_fwd_f32.argtypes = [P] * 8 + [L] * 2 + [I]  # fused channel mixer (ssmkit.models.mixer)
    lib.mix_fwd_f32.restype = I
    lib.mix_bwd_f32.argtypes = [P] * 9 + [L] * 2 + [I]
    lib.mix_bwd_f32.restype = I
    lib.vdm_fwd_f64.argtypes = [P] * 3 + [I] + [L] * 3 + [I]  # Vandermonde kernel (ssmkit.kernels.vandermonde)
    lib.vdm_fwd_f64.restype = I
    lib.vdm_bwd_f64.argtypes = [P] * 3 + [I] + [P] * 2 + [L] * 4 + [I]
    lib.vdm_bwd_f64.restype = I
    lib.s4w_fwd_f32.argtypes = [P] * 3 + [L] * 3 + [I]  # S4's rank-1 Woodbury step (ssmkit.kernels.cauchy)
    lib.s4w_fwd_f32.restype = I
    lib.s4w_bwd_f32.argtypes = [P] * 5 + [L] * 3 + [I]
    lib.s4w_bwd_f32.restype = I
    lib.ln_fwd_f32.argtypes = [P] * 6 + [L] * 2 + [D, I]  # LayerNorm (ssmkit.ops.layer_norm)
    lib.ln_fwd_f32.restype = None
    lib.ln_bwd_f32.argtypes = [P] * 10 + [L] * 2 + [I]
    lib.ln_bwd_f32.restype = I
    lib.ln_blocks.argtypes = [L]
    lib.ln_blocks.restype = L
    for name in ("mix_g_stride", "mix_z_stride"):
        getattr(lib, name).argtypes = [L]
        getattr(lib, name).restype = L
    lib.mamba_stack_step.argtypes = [I, L] + [P] * 5 + [L] * 6 + [I]
    lib.mamba_stack_step.restype = I
    lib.mamba2_stack_step.argtypes = [I, L] + [P] * 5 + [L] * 7 + [D] * 3 + [I, I]
    lib.mamba2_stack_step.restype = I
    lib.ssm_abi_version.restype = I
    lib.gn_blocks.argtypes = [L]
    lib.gn_blocks.restype = L
    lib.ssm_bwd_tasks.argtypes = [L] * 4
    lib.ssm_bwd_tasks.restype = L


def library() -> Optional[ctypes.CDLL]:
    """The loaded library, or None if it is disabled or could not be built."""
    global _lib, _tried, _error
    if os.environ.get("SSMKIT_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        try:
            lib = ctypes.CDLL(str(_locate()))
            _declare(lib)
            if lib.ssm_abi_version() != _ABI:
                raise RuntimeError("stale native library (ABI version mismatch)")
            _lib = lib
        except Exception as exc:  # any failure means: use the torch path
            _error = str(exc)
            warnings.warn(f"ssmkit: native CPU kernels unavailable, using the torch path ({_error})",
                          RuntimeWarning, stacklevel=3)
        _tried = True
    return _lib


def available() -> bool:
    """True if the native kernels are enabled and built (building them on the first call), and no
    ``torch.compile`` trace is running: the kernels are ctypes calls the compiler cannot see into
    (tracing Mamba-2's crashed the process inside torch 2.13's dynamo), so compiled code takes
    every operation's torch path, which the compiler can trace and fuse."""
    return library() is not None and not _is_compiling()


def ptr(t) -> Optional[int]:
    """The address of a tensor's data for a kernel argument (None for an absent tensor: NULL)."""
    return None if t is None else t.data_ptr()


def row_view(t: torch.Tensor):
    """``t`` as (rows, D) with its last dimension contiguous and its rows evenly spaced, for a
    kernel that takes a row stride: a view where t's layout allows (e.g. the padded rows of
    ``padded_linear``), else a contiguous copy; and that row stride."""
    D = t.shape[-1]
    if t.stride(-1) != 1 or t.numel() == 0:
        t = t.contiguous()
    try:
        t2 = t.view(-1, D)
    except RuntimeError:  # rows not evenly strided: copy
        t2 = t.contiguous().view(-1, D)
    return t2, (t2.stride(0) if t2.shape[0] > 1 else D)


def autograd_needed(*tensors) -> bool:
    """Whether a computation must go through its autograd function rather than a native call
    that autograd does not see: grad mode on and a tensor that requires a gradient, or a
    forward-mode AD level or a torch.func transform active (their dual or wrapped tensors do not
    set ``requires_grad``; a bare native call would drop their tangents silently, whereas the
    autograd function, which has no forward-mode rule, refuses them with torch's error)."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return True
    return transform_active(*tensors)


def transform_active(*tensors) -> bool:
    """A forward-mode AD level is open, or one of ``tensors`` is wrapped by a torch.func transform
    (grad, vmap, jvp): the native functions, which have first-order reverse-mode gradients only,
    must not compute such tensors by a bare call."""
    return _forward_ad._current_level >= 0 or any(
        isinstance(t, torch.Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)


def kernel(name: str, dtype):
    """The loaded library's ``name_f32`` for float32 / complex64 operands, else ``name_f64``."""
    single = dtype in (torch.float32, torch.complex64)
    return getattr(library(), f"{name}_{'f32' if single else 'f64'}")
