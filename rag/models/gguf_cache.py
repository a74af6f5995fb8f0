"""Convert a bundled GGUF model once into a safetensors folder that reloads in about a second.

transformers dequantizes GGUF weights to float32 on every load (20-50 s here); the converted folder is kept
under ``<cache>/models/<name>-<sha256 prefix>/`` and written atomically (temp folder, then rename), under a
file lock so that two processes never convert the same model at once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import tempfile
from pathlib import Path

from rag.models.bundled import gguf_file
from rag.models.catalog import BundledModel
from rag.settings import cache_dir

logger = logging.getLogger(__name__)

_MARKER = "ragloom-source.json"


def converted_dir(model: BundledModel) -> Path:
    return cache_dir() / "models" / f"{model.name}-{model.sha256[:12]}"


def is_converted(model: BundledModel) -> bool:
    return (converted_dir(model) / _MARKER).is_file()


def ensure_converted(model: BundledModel) -> Path:
    """The converted folder of ``model``, converting it first if needed."""
    target = converted_dir(model)
    if is_converted(model):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_converted(model):  # another process may have finished while we waited
            _convert(model, target)
    return target


def _convert(model: BundledModel, target: Path) -> None:
    import safetensors.torch
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.warning("converting %s from GGUF to a safetensors cache at %s (once)", model.name, target)
    work = Path(tempfile.mkdtemp(prefix=f".{model.name}-", dir=target.parent))
    try:
        gguf = gguf_file(model, work)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        lm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        out = work / "model"
        out.mkdir()
        if hasattr(lm.config, "quantization_config"):
            del lm.config.quantization_config  # transformers refuses to save a GGUF-loaded config otherwise
        lm.config.save_pretrained(out)
        lm.generation_config.save_pretrained(out)
        tokenizer.save_pretrained(out)
        safetensors.torch.save_model(lm, str(out / "model.safetensors"))
        (out / _MARKER).write_text(json.dumps({"name": model.name, "sha256": model.sha256}, indent=2))
        if target.exists():  # a stale, unmarked folder from an interrupted run
            shutil.rmtree(target)
        out.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
