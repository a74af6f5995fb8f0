"""Hot inner loops of ragloom: Triton kernels, each with a pure-torch reference of the same signature.

Call the dispatching functions exported here; they pick the Triton kernel for CUDA tensors when Triton is
installed, and the torch reference everywhere else. Nothing compiles or probes hardware at import.
"""

from rag.kernels.dispatch import segmented_attention

__all__ = ["segmented_attention"]
