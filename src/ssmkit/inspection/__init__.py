"""Look inside trained state-space layers: kernels, poles, frequency responses, Δ, memory
lengths and Hankel singular values, as numbers (:func:`inspect_model`) and as figures with an
index.html (:func:`write_report`); and write the reduced copy of a trained run
(:func:`reduce_run`). docs/inspect.md explains each quantity.

Per layer kind:

- S4, S4D, RTF (LTI): kernel ``K_k = C Ā^k B̄`` per channel (``layer.kernel(L)``); poles = the
  eigenvalues of the discrete ``Ā`` (``discrete_ssm()``; for RTF the roots of its denominator);
  ``H(e^{iω}) = D + Σ_k K_k e^{-iωk}``; Δ per channel (S4, S4D); Hankel singular values.
- S5: the diagonal ``Λ̄`` and ``B̄`` read through ``step`` (state ``x' = Λ̄ x + B̄ u``), ``C`` from the
  parameters: kernel from input channel h to the pre-activation output h; Δ per mode.
- Mamba, Mamba-2: Δ is a function of the input; its distribution over a batch of the task's
  inputs (no fixed kernel).

The effective memory length of a channel is the smallest lag m whose first m kernel taps hold
99% of the kernel's energy ``Σ_k K_k²`` (the total from the Gramian, ``C P Cᵀ``, when the system
is stable; ``inf`` if m exceeds the window L).
"""
from .analysis import LayerInspection, inspect_layer, inspect_model, inspect_run, memory_length
from .reduced_run import reduce_run
from .report import write_report

__all__ = ["LayerInspection", "inspect_layer", "inspect_model", "inspect_run", "memory_length", "write_report",
           "reduce_run"]
