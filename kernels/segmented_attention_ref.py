"""Pure-torch segmented attention: one softmax per key segment, merged exactly through log-sum-exp.

The keys of one attention call are split into segments (a shared prefix, the parallel-encoded passages, the
question and answer tokens). Segment ``s`` has a temperature ``t[s]`` and a log-sum-exp scale ``a[s]``:

    logits_s = (q · k_s) · sm_scale / t[s]          (masked entries are -inf)
    lse_s    = logsumexp(logits_s)                    (-inf for an empty or fully masked segment)
    o_s      = softmax(logits_s) @ v_s
    out      = Σ_s softmax_s(a[s] · lse_s) · o_s

With every ``t`` and ``a`` equal to 1 this is ordinary softmax attention over all keys, so parallel-encoded
passages with APE switched off attend exactly as sequential ones would. APE puts all passages in one segment
with ``t < 1`` and ``a`` its scaling factor (its ``lse_context * scale``); shared-prefix attention (Hydragen)
uses t = a = 1.
"""

from __future__ import annotations

import torch


def segmented_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segment_ids: torch.Tensor,
    temperature: torch.Tensor,
    lse_scale: torch.Tensor,
    mask: torch.Tensor | None = None,
    sm_scale: float | None = None,
) -> torch.Tensor:
    """Attention of ``q`` over segmented keys, merged through per-segment log-sum-exp.

    Args:
        q: ``[B, Hq, Lq, D]`` queries.
        k: ``[B, Hk, Lk, D]`` keys; ``Hq`` a multiple of ``Hk`` (grouped-query attention).
        v: ``[B, Hk, Lk, D]`` values.
        segment_ids: ``[Lk]`` int64, the segment of each key, in ``0 .. S-1``.
        temperature: ``[S]`` float > 0, divides each segment's logits.
        lse_scale: ``[S]`` float > 0, multiplies each segment's log-sum-exp in the merge.
        mask: optional bool, broadcastable to ``[B, Hq, Lq, Lk]``; True keeps a key for a query.
        sm_scale: logit scale, ``1/sqrt(D)`` by default.

    Returns:
        ``[B, Hq, Lq, D]`` in ``q``'s dtype; a query row that sees no key gets zeros.

    The merge weight of segment ``s`` times the softmax within it is one probability per key,
    ``p_j = exp(logit_j + c_s)`` with ``c_s = a[s]·lse_s − logsumexp_s'(a[s']·lse_s') − lse_s``, so the whole
    call is one ``q·kᵀ`` product, one log-sum-exp per run of keys of one segment (a contiguous slice) and one
    ``p·v`` product: no per-segment copies of the keys, and grouped-query heads share their key head
    without repeating it.

    >>> q, k = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 5, 8)
    >>> ones = torch.ones(2)
    >>> out = segmented_attention_reference(q, k, k, torch.tensor([0, 0, 1, 1, 0]), ones, ones)
    >>> torch.allclose(out, torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1) @ k, atol=1e-6)
    True
    """
    check_segmented_inputs(q, k, v, segment_ids, temperature, lse_scale)
    batch, heads, lq, dim = q.shape
    kv_heads, lk, segments = k.shape[1], k.shape[2], temperature.shape[0]
    scale = dim**-0.5 if sm_scale is None else sm_scale
    # runs of consecutive keys of one segment: APE's [prefix | passages | question] is 3 runs of 2 segments
    run_segment, run_length = torch.unique_consecutive(segment_ids, return_counts=True)
    runs = run_segment.tolist()
    bounds = [0, *torch.cumsum(run_length, 0).tolist()]
    # grouped-query attention: the queries of a key head's group become extra rows of one product
    qf = q.float().reshape(batch, kv_heads, (heads // kv_heads) * lq, dim)
    logits = torch.matmul(qf, k.float().transpose(-1, -2)).view(batch, heads, lq, lk)  # [B, Hq, Lq, Lk]
    logits.mul_((scale / temperature.float())[segment_ids])
    if mask is not None:
        logits.masked_fill_(~mask, float("-inf"))
    run_lse = [torch.logsumexp(logits[..., bounds[r] : bounds[r + 1]], dim=-1) for r in range(len(runs))]
    empty = torch.full((batch, heads, lq), float("-inf"), device=q.device)
    lse = torch.stack(  # [S, B, Hq, Lq]: -inf for an empty or fully masked segment
        [
            _logsumexp_of([x for x, r in zip(run_lse, runs, strict=True) if r == s], empty)
            for s in range(segments)
        ]
    )
    merged = lse * lse_scale.float().view(-1, 1, 1, 1)
    offset = merged - torch.logsumexp(merged, dim=0) - lse  # log(merge weight) - lse, per segment
    offset.masked_fill_(lse == float("-inf"), float("-inf"))  # no key in the segment (or the row): p = 0
    per_key = offset.index_select(0, run_segment).permute(1, 2, 3, 0).repeat_interleave(run_length, dim=-1)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        p = (logits + per_key).exp()  # autograd keeps the logits the log-sum-exps were taken of
    else:
        p = logits.add_(per_key).exp_()  # [B, Hq, Lq, Lk]
    out = torch.matmul(p.view(batch, kv_heads, -1, lk), v.float())  # [B, Hk, G*Lq, D]
    return out.view(batch, heads, lq, dim).to(q.dtype)


def _logsumexp_of(parts: list[torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
    """log(Σ exp) of same-shaped tensors, elementwise; ``empty`` (all -inf) for none."""
    if len(parts) <= 1:
        return parts[0] if parts else empty
    return torch.logsumexp(torch.stack(parts), dim=0)


def check_segmented_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segment_ids: torch.Tensor,
    temperature: torch.Tensor,
    lse_scale: torch.Tensor,
) -> None:
    """Raise ``ValueError`` on shapes the segmented attention cannot take."""
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape:
        raise ValueError(f"expected q [B,H,Lq,D] and k, v [B,H,Lk,D]; got {tuple(q.shape)}, {tuple(k.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1] or q.shape[1] % k.shape[1]:
        raise ValueError(f"q {tuple(q.shape)} does not fit k {tuple(k.shape)}")
    if segment_ids.shape != (k.shape[2],):
        raise ValueError(f"segment_ids has shape {tuple(segment_ids.shape)}; expected ({k.shape[2]},)")
    if temperature.dim() != 1 or temperature.shape != lse_scale.shape:
        raise ValueError("temperature and lse_scale must be 1-D, one value per segment")
    if (
        segment_ids.numel()
        and not 0 <= int(segment_ids.min()) <= int(segment_ids.max()) < temperature.shape[0]
    ):
        raise ValueError(f"segment_ids must lie in 0 .. {temperature.shape[0] - 1}")
