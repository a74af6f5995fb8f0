"""The hardware seam holds: rag/generation/ reaches kernels and weight formats only through rag.lm."""

from __future__ import annotations

import ast
from pathlib import Path

import rag.generation

GENERATION = Path(rag.generation.__file__).parent
# kernels, Triton, the quantized weight formats and the attention implementations: rag.lm applies them
TRICKS = (
    "rag.kernels",
    "triton",
    "rag.lm.quantized_linear",
    "rag.lm.quantized_model",
    "rag.lm.quantized_weight",
    "rag.lm.quantized_cache",
    "rag.lm.gguf_weights",
    "rag.lm.grouped_attention",
)


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_generation_modules_import_no_hardware_trick() -> None:
    files = sorted(GENERATION.rglob("*.py"))
    assert len(files) > 20  # the whole package was read
    offenders = {
        f"{path.relative_to(GENERATION)}: {module}"
        for path in files
        for module in imported_modules(path)
        if module.startswith(TRICKS)
    }
    assert not offenders
    sources = "".join(path.read_text() for path in files)
    assert "torch.ops." not in sources and "_weight_int" not in sources  # no kernel called by name


def test_the_check_sees_an_offending_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from rag.kernels import cad_combine\nimport triton.language as tl\n")
    assert {m for m in imported_modules(module) if m.startswith(TRICKS)} == {"rag.kernels", "triton.language"}
