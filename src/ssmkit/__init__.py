"""ssmkit: state-space sequence models from HiPPO to Mamba in one PyTorch library.

Public API (everything else is importable but private):

- HiPPO: ``transition``, ``discretize``, ``basis``, ``HiPPO``, ``nplr``
- kernels and operators: ``naive_kernel``, ``vandermonde_kernel``, ``dplr_kernel``,
  ``rational_kernel``, ``fftconv``, ``selective_scan``, ``ssd``, ``linear_scan``
- layers: ``S4``, ``S4D``, ``RTF``, ``Mamba``, ``Mamba2``, ``S5``, ``get_layer``, ``available_layers``
- models: ``Backbone``, ``SequenceClassifier``, ``LanguageModel``
- tasks and training: ``build_task``, ``available_tasks``, ``TrainConfig``, ``fit``, ``load_model``
- CPU threads, OpenMP waiting and malloc: ``runtime.configure``, ``runtime.status`` (docs/performance.md)
"""
__version__ = "0.1.0"

# Before torch is imported (its OpenMP runtime reads them once, at load): fill in how idle
# OpenMP threads wait, only where the user set none of OMP_WAIT_POLICY / GOMP_SPINCOUNT /
# KMP_BLOCKTIME (SSMKIT_WAIT_POLICY=default: set nothing). See ssmkit.runtime, docs/performance.md.
from . import runtime as _runtime  # noqa: E402  (imports nothing heavy)

_runtime.apply_env_defaults()
# Large freed blocks kept by malloc for reuse instead of being page-faulted in again (glibc;
# SSMKIT_MALLOC=default: leave malloc alone). See ssmkit.runtime, docs/performance.md.
_runtime.apply_malloc_policy()

from . import hippo, kernels, layers, lti, models, ops, runtime, tasks, train
from .hippo import HiPPO, basis, discretize, nplr, transition
from .kernels import dplr_kernel, naive_kernel, rational_kernel, vandermonde_kernel
from .layers import RTF, S4, S4D, S5, Mamba, Mamba2, SequenceLayer, available_layers, get_layer
from .models import Backbone, LanguageModel, SequenceClassifier
from .ops import fftconv, linear_scan, selective_scan, ssd
from .tasks import available_tasks, build_task
from .train import TrainConfig, fit, load_model

if _runtime.os.environ.get("SSMKIT_THREADS", "").strip():
    _runtime.configure(_runtime.os.environ["SSMKIT_THREADS"])
