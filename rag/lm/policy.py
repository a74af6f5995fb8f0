"""How a causal LM runs on a device: the precision of its weights and the attention it uses.

=============  ======================================================================================
precision      weights (activations: see ``activations`` below; float32 with ``exact``, bf16 with ``bf16``)
=============  ======================================================================================
``mixed``      4-bit tensors of the GGUF file kept as they are, the others (5-, 6-, 8-bit, the output layer
               included) as int8 rows: the CPU default, within a point of float32 on XQuAD
``int4``       every linear weight in int4 groups: the fastest, but 5- and 6-bit tensors lose a bit or two
``bf16``       dequantized to bf16 (the default on CUDA)
``exact``      dequantized to float32: the reference the others are measured against
=============  ======================================================================================

The CPU default is :data:`CPU_DEFAULT`; docs/runtime.md has the measured speed and answer quality of each.

``activations``: the dtype between the layers of ``mixed`` and ``int4``. ``auto`` takes bf16 where the CPU has
bf16 units (AVX-512 BF16 or AMX tiles), float32 where it has not: there every bf16 operation is emulated in
float32 and a prompt's matrix products run several times slower than in float32 (docs/runtime.md).

``decoder``: ``torch`` runs every forward in torch; ``llama.cpp`` runs the prompt in torch and the answer's
tokens in llama.cpp's engine on the same GGUF file (:mod:`rag.lm.llama_cpp_decoder`; needs llama-cpp-python,
the ``bench`` extra).

The policy is applied once, when the model is loaded (:func:`rag.lm.load_causal_lm`); the decoding loop, the
drafters, CAD, parallel contexts and the rerankers see a transformers model either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from rag.cpu import has_bf16_units
from rag.errors import ConfigError
from rag.lm.gguf_weights import LowBits

if TYPE_CHECKING:
    import torch

Precision = Literal["mixed", "int4", "bf16", "exact"]
PRECISIONS: tuple[Precision, ...] = ("mixed", "int4", "bf16", "exact")
CPU_DEFAULT: Precision = "mixed"
Decoder = Literal["torch", "llama.cpp"]
DECODERS: tuple[Decoder, ...] = ("torch", "llama.cpp")
Activations = Literal["auto", "bf16", "float32"]
ACTIVATIONS: tuple[Activations, ...] = ("auto", "bf16", "float32")


@dataclass(frozen=True)
class RuntimePolicy:
    """``device`` ("cpu", "cuda", "cuda:1", ...), the ``precision`` of the weights, the dtype of the quantized
    runtimes' ``activations`` and the engine that ``decoder`` s the answer's tokens (see the module doc)."""

    device: str = "cpu"
    precision: Precision = CPU_DEFAULT
    decoder: Decoder = "torch"
    activations: Activations = "auto"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.decoder not in DECODERS:
            raise ConfigError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if self.activations not in ACTIVATIONS:
            choices = ", ".join(ACTIVATIONS)
            raise ConfigError(f"activations must be one of {choices}, got {self.activations!r}")
        if self.decoder == "llama.cpp" and not self.device.startswith("cpu"):
            raise ConfigError(f"decoder 'llama.cpp' runs on the CPU; on {self.device} use 'torch'")
        if self.quantized and not self.device.startswith("cpu"):
            raise ConfigError(
                f"precision {self.precision!r} runs torch's CPU int4/int8 kernels; "
                f"on {self.device} use 'bf16' or 'exact'"
            )

    @property
    def quantized(self) -> bool:
        return self.precision in ("mixed", "int4")

    @property
    def activation_dtype(self) -> torch.dtype:
        """The dtype the model computes in: float32 for ``exact``, bf16 for ``bf16``, and for the quantized
        precisions bf16 where the CPU has bf16 units, else float32 (``activations`` overrides)."""
        import torch

        if self.precision == "exact":
            return torch.float32
        if self.precision == "bf16" or self.activations == "bf16":
            return torch.bfloat16
        if self.activations == "float32":
            return torch.float32
        return torch.bfloat16 if has_bf16_units() else torch.float32

    @property
    def low_bits(self) -> LowBits:
        """What the file's tensors that are not 4-bit become."""
        return "int4" if self.precision == "int4" else "int8"

    @classmethod
    def for_device(
        cls,
        device: str | None = None,
        precision: Precision | None = None,
        decoder: Decoder | None = None,
        activations: Activations | None = None,
    ) -> RuntimePolicy:
        """The default policy of ``device`` (default: CUDA when present, else the CPU), with overrides."""
        import torch

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        chosen = precision or (CPU_DEFAULT if device.startswith("cpu") else "bf16")
        return cls(device, chosen, decoder or "torch", activations or "auto")
