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
    """
    check_segmented_inputs(q, k, v, segment_ids, temperature, lse_scale)
    scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
    if k.shape[1] != q.shape[1]:  # grouped-query attention: each key/value head serves a group of query heads
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    qf, kf, vf = q.float(), k.float(), v.float()
    logits = (qf @ kf.transpose(-1, -2)) * scale / temperature.float()[segment_ids]  # [B, H, Lq, Lk]
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    outputs, lses = [], []
    for s in range(temperature.shape[0]):
        columns = (segment_ids == s).nonzero().squeeze(1)
        seg_logits = logits.index_select(-1, columns)
        lse = torch.logsumexp(seg_logits, dim=-1, keepdim=True)  # -inf for an empty or fully masked segment
        probs = torch.exp(seg_logits - lse).nan_to_num(0.0)  # (-inf) - (-inf) rows become zeros
        outputs.append(probs @ vf.index_select(-2, columns))
        lses.append(lse * lse_scale[s].float())
    merge = torch.softmax(torch.stack(lses), dim=0).nan_to_num(0.0)  # [S, B, H, Lq, 1]; no key at all -> 0
    return (merge * torch.stack(outputs)).sum(dim=0).to(q.dtype)


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
