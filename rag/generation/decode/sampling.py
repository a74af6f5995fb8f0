"""Pick the next token from one row of logits: greedy, or temperature → top-k → top-p → multinomial.

Safe for every value ``SamplingParams`` accepts, however extreme: the logits are shifted so that their
maximum is 0 before dividing by the temperature (a temperature of 1e-300 then gives -inf for every token but
the best ones, never inf - inf = nan), NaN logits count as -inf, and a row left without any finite probability
falls back to the argmax.

>>> import torch
>>> from rag.generation.base import SamplingParams
>>> next_token(torch.tensor([0.1, 3.0, -1.0]), SamplingParams())
1
"""

from __future__ import annotations

import torch

from rag.errors import ConfigError
from rag.generation.base import SamplingParams


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Scale logits ``# [vocab]`` by ``1 / temperature`` (> 0), after shifting their maximum to 0.

    In float64, where a temperature as small as 5e-324 is still > 0 (in float32 it would round to 0 and make
    the best logit 0 / 0 = nan); the result is <= 0 everywhere: 0 for the best tokens, at worst -inf.
    """
    logits = sanitize(logits).double()
    top = logits.max()
    if not torch.isfinite(top):  # every logit is -inf: nothing to scale
        return logits
    return (logits - top) / temperature


def sanitize(logits: torch.Tensor) -> torch.Tensor:
    """NaN -> -inf and +inf -> the largest finite value, so that softmax and argmax stay defined."""
    finite_max = torch.finfo(logits.dtype).max
    return torch.nan_to_num(logits, nan=float("-inf"), posinf=finite_max, neginf=float("-inf"))


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set all but the ``k`` largest logits ``# [vocab]`` to -inf; ``k == 0`` keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k).values[-1]  # the smallest logit that survives
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of top tokens whose probability mass reaches ``p``; always keeps the argmax."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)  # [vocab], [vocab]
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # mass of the strictly better tokens
    drop_sorted = mass_before >= p  # position 0 has mass_before == 0 < p, so it is never dropped
    drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)  # back to vocab order
    return logits.masked_fill(drop, float("-inf"))


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution a sampled token is drawn from: temperature → top-k → top-p → softmax ``# [vocab]``."""
    logits = sanitize(logits.float())
    scaled = apply_temperature(logits, params.temperature)
    scaled = top_k_filter(scaled, params.top_k)
    scaled = top_p_filter(scaled, params.top_p)
    probs = torch.softmax(scaled, dim=-1).float()
    if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:  # no finite logit at all
        probs = torch.zeros_like(probs)
        probs[int(torch.argmax(logits))] = 1.0
    return probs


def next_token(
    logits: torch.Tensor,  # [vocab]
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> int:
    """The id of the next token; ``generator`` seeds the draw so that sampling is reproducible."""
    if logits.dim() != 1:
        raise ValueError(f"expected logits of shape [vocab], got {tuple(logits.shape)}")
    if params.temperature == 0:
        return int(torch.argmax(sanitize(logits)))
    probs = target_probs(logits, params)  # [vocab]
    return int(torch.multinomial(probs, num_samples=1, generator=generator))


def logit_bias(
    params: SamplingParams, vocab_size: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``params.logit_bias`` as token ids ``# [n]`` and biases ``# [n]`` to add to each step's logits; None
    when there is none. A token id outside the vocabulary is a ConfigError."""
    if not params.logit_bias:
        return None
    ids, biases = zip(*params.logit_bias, strict=True)
    outside = [i for i in ids if i >= vocab_size]
    if outside:
        raise ConfigError(f"logit_bias: token {outside[0]} is not in the vocabulary of {vocab_size} tokens")
    return torch.tensor(ids, device=device), torch.tensor(biases, dtype=torch.float32, device=device)
