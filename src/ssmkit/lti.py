"""Linear time-invariant systems between their views: the user-facing home of

- conversions between state-space and transfer-function forms (``ss_to_tf``, ``tf_to_ss``,
  ``companion``, ``poly_from_roots``; implemented in ``ssmkit.kernels.transfer``, docs/math.md §8);
- model-order reduction by balanced truncation (``balanced_truncation``, ``hankel_singular_values``,
  ``gramians``, ``reduce``; implemented in ``ssmkit.reduction``, docs/inspect.md).
"""
from __future__ import annotations

from .kernels.transfer import companion, poly_from_roots, ss_to_tf, tf_to_ss
from .reduction import UnstableSystemError, balanced_truncation, gramians, hankel_singular_values, reduce

__all__ = ["poly_from_roots", "ss_to_tf", "companion", "tf_to_ss", "balanced_truncation", "hankel_singular_values",
           "gramians", "reduce", "UnstableSystemError"]
