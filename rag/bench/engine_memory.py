"""Peak memory of one engine answering one prompt, each engine in a process of its own.

``python -m rag.bench.engine_memory`` reads a JSON job on stdin, loads the engine, answers the prompt token
ids greedily and prints its peak resident set (``ru_maxrss``) in GB. Nothing heavier than the engine is
imported: the llama.cpp job does not import torch, so its figure is llama.cpp's own.

>>> ENGINES
('ragloom', 'ragloom, llama.cpp decoder', 'llama.cpp', 'generate()')
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RAGLOOM_ON_LLAMA_CPP = "ragloom, llama.cpp decoder"  # the prompt in torch, the answer's tokens in llama.cpp
ENGINES = ("ragloom", RAGLOOM_ON_LLAMA_CPP, "llama.cpp", "generate()")


def peak_rss(
    engine: str,
    model: str,
    prompt_ids: Sequence[int],
    eos_token_ids: Sequence[int],
    max_new_tokens: int = 160,
    min_new_tokens: int = 128,
    threads: int | None = None,
) -> float:
    """Peak RSS in GB of a fresh process running ``engine`` on ``model`` for one answer to ``prompt_ids``."""
    import torch

    job = {
        "engine": engine,
        "model": model,
        "prompt_ids": list(prompt_ids),
        "eos": sorted(eos_token_ids),
        "max_new_tokens": max_new_tokens,
        "min_new_tokens": min_new_tokens,
        "threads": threads or torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory(prefix="rag-engine-memory-") as tmp:
        job["workdir"] = tmp
        if engine == "llama.cpp":  # the file is assembled here, so the child needs no ragloom import
            from rag.models import bundled_model
            from rag.models.bundled import gguf_file

            bundled = bundled_model(model)
            if bundled is None or bundled.fmt != "gguf":
                raise ValueError(f"{model} is not a bundled GGUF model")
            job["gguf"] = str(gguf_file(bundled, Path(tmp)))
        done = subprocess.run(
            [sys.executable, "-m", "rag.bench.engine_memory"],
            cwd=tmp,  # not a checkout: its kernels/ folder would shadow the PyPI package transformers imports
            input=json.dumps(job),
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"{engine} on {model} failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def _answer(job: dict[str, Any]) -> int:
    """Run the job; returns the number of new tokens."""
    ids, eos, most, least = job["prompt_ids"], job["eos"], job["max_new_tokens"], job["min_new_tokens"]
    if job["engine"] == "llama.cpp":
        import numpy as np
        from llama_cpp import Llama, LogitsProcessorList

        llm = Llama(
            job["gguf"], n_ctx=4096, n_threads=job["threads"], n_threads_batch=job["threads"], verbose=False
        )
        made: list[int] = []

        def block_eos(_: Any, scores: Any) -> Any:
            if len(made) < least:
                scores[eos] = -np.inf
            return scores

        for token in llm.generate(ids, temp=0.0, logits_processor=LogitsProcessorList([block_eos])):
            made.append(token)
            if token in eos or len(made) >= most:
                break
        return len(made)
    import torch

    torch.set_num_threads(job["threads"])
    prompt = torch.tensor([ids])
    if job["engine"] in ("ragloom", RAGLOOM_ON_LLAMA_CPP):  # ragloom's own loop, the model as it loads here
        from rag.generation import CausalLMConfig, CausalLMGenerator, GenerationParams

        decoder = "llama.cpp" if job["engine"] == RAGLOOM_ON_LLAMA_CPP else "torch"
        generator = CausalLMGenerator(CausalLMConfig(model=job["model"], decoder=decoder))
        params = GenerationParams(max_new_tokens=most, min_new_tokens=least)
        return len(list(generator._answer_tokens(prompt, params)))
    from rag.lm import load_causal_lm

    model, _ = load_causal_lm(job["model"], precision="exact")
    with torch.inference_mode():
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=most,
            min_new_tokens=least,
            eos_token_id=eos,
            pad_token_id=eos[0],
        )
    return out.shape[1] - prompt.shape[1]


def main() -> int:
    job = json.loads(sys.stdin.read())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _answer(job)
    print(_peak_rss_kb() / 1e6)
    return 0


def _peak_rss_kb() -> int:
    """This process's peak resident set in kB: ``VmHWM``, which starts afresh at ``exec``. ``ru_maxrss`` does
    not: it keeps the parent's high-water mark from before the exec (a parent with a model loaded reads as
    using that much)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux


if __name__ == "__main__":
    raise SystemExit(main())
