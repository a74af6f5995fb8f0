"""The wheel holds every package of the checkout: each folder with an ``__init__.py`` is listed."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_in_pyproject() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for package, folder in setuptools["package-dir"].items():  # "rag" -> rag/, "rag.indexes" -> indexes/, ...
        for init in (ROOT / folder).rglob("__init__.py"):
            found.add(".".join((package, *init.parent.relative_to(ROOT / folder).parts)))
    assert found - set(setuptools["packages"]) == set(), "folders missing from [tool.setuptools] packages"
