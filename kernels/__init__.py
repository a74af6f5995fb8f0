"""Hot inner loops of ragloom: Triton kernels, each with a pure-torch reference of the same signature.

Call the dispatching functions exported here; they pick the Triton kernel for CUDA tensors when Triton is
installed, and the torch reference everywhere else. Nothing compiles or probes hardware at import.

- :func:`segmented_attention`: attention over independent key segments merged by log-sum-exp (APE, Hydragen).
- :func:`pq_adc`: PQ asymmetric distance, lookup tables gathered at the codes, differentiable in the tables.
- :func:`cad_combine`: context-aware decoding's ``(1 + α)·log_softmax(a) − α·log_softmax(b)``.
"""

from rag.kernels.dispatch import cad_combine, pq_adc, segmented_attention

__all__ = ["cad_combine", "pq_adc", "segmented_attention"]
