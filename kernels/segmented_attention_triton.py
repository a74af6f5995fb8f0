"""Triton segmented attention: flash-attention over key segments, merged by log-sum-exp in the same program.

Same signature and formula as :func:`rag.kernels.segmented_attention_ref.segmented_attention_reference`.
One program owns a block of query rows of one (batch, key/value head): the rows of all the query heads of
that head's group, so grouped-query heads load each key and value block once (a decoding step with 7 query
heads per key head fills 7 rows of a block, not 1). The program walks the segments one after the other (the
wrapper sorts the keys by segment once, so a segment is a contiguous run of the sorted order) and, inside a
segment, the key blocks with the usual online softmax (running max ``m``, running sum ``l``, running output
``acc``). At the end of a segment its log-sum-exp ``lse_s = m + log l`` and output ``acc / l`` enter a
second online softmax, over the scaled log-sum-exps ``a[s]·lse_s``, which is the merge. Imported by the
dispatcher or a test only (it imports Triton).

Run it on CPU tensors under the interpreter (``TRITON_INTERPRET=1`` set before this module is imported).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rag.kernels.segmented_attention_ref import check_segmented_inputs


@triton.jit
def _segmented_attention_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, order_ptr, bounds_ptr, temperature_ptr, lse_scale_ptr, mask_ptr,
    sm_scale, kv_heads, group, lq, dim, segments,
    sqb, sqh, sqm, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    sob, soh, som, sod,
    smb, smh, smm, smn,
    HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    block_m = tl.program_id(0)
    b = tl.program_id(1) // kv_heads
    kv_h = tl.program_id(1) % kv_heads
    # rows r of this key/value head: query head kv_h * group + r // lq, query position r % lq
    rows = block_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    h = kv_h * group + rows // lq  # [BLOCK_M]
    rows_q = rows % lq  # [BLOCK_M]
    cols_d = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    row_ok = rows < group * lq
    d_ok = cols_d < dim
    q = tl.load(
        q_ptr + b * sqb + h[:, None] * sqh + rows_q[:, None] * sqm + cols_d[None, :] * sqd,
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    ).to(tl.float32)  # [BLOCK_M, BLOCK_D]
    neg_inf = float("-inf")
    # the merge across segments: running max and sum of a[s]*lse_s, and the weighted output
    merge_max = tl.full([BLOCK_M], neg_inf, tl.float32)
    merge_sum = tl.zeros([BLOCK_M], tl.float32)
    out = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for s in range(segments):
        start = tl.load(bounds_ptr + s)
        end = tl.load(bounds_ptr + s + 1)
        logit_scale = sm_scale / tl.load(temperature_ptr + s).to(tl.float32)
        m = tl.full([BLOCK_M], neg_inf, tl.float32)
        l = tl.zeros([BLOCK_M], tl.float32)  # noqa: E741 (the flash-attention name)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for n0 in range(start, end, BLOCK_N):
            sorted_cols = n0 + tl.arange(0, BLOCK_N)
            col_ok = sorted_cols < end
            keys = tl.load(order_ptr + sorted_cols, mask=col_ok, other=0)  # [BLOCK_N] original key numbers
            k = tl.load(
                k_ptr + b * skb + kv_h * skh + keys[:, None] * skn + cols_d[None, :] * skd,
                mask=col_ok[:, None] & d_ok[None, :],
                other=0.0,
            ).to(tl.float32)  # [BLOCK_N, BLOCK_D]
            logits = tl.dot(q, tl.trans(k), input_precision="ieee") * logit_scale  # [BLOCK_M, BLOCK_N]
            keep = row_ok[:, None] & col_ok[None, :]
            if HAS_MASK:
                visible = tl.load(
                    mask_ptr + b * smb + h[:, None] * smh + rows_q[:, None] * smm + keys[None, :] * smn,
                    mask=keep,
                    other=0,
                )
                keep = keep & (visible != 0)
            logits = tl.where(keep, logits, neg_inf)
            m_new = tl.maximum(m, tl.max(logits, axis=1))
            m_safe = tl.where(m_new == neg_inf, 0.0, m_new)  # a row with nothing visible yet stays at 0
            p = tl.exp(logits - m_safe[:, None])
            rescale = tl.exp(m - m_safe)
            l = l * rescale + tl.sum(p, axis=1)  # noqa: E741
            v = tl.load(
                v_ptr + b * svb + kv_h * svh + keys[:, None] * svn + cols_d[None, :] * svd,
                mask=col_ok[:, None] & d_ok[None, :],
                other=0.0,
            ).to(tl.float32)
            acc = acc * rescale[:, None] + tl.dot(p, v, input_precision="ieee")
            m = m_new
        # close the segment: its log-sum-exp, scaled, enters the merge softmax
        seen = l > 0.0
        lse = tl.where(seen, m + tl.log(tl.where(seen, l, 1.0)), neg_inf)
        x = lse * tl.load(lse_scale_ptr + s).to(tl.float32)
        new_max = tl.maximum(merge_max, x)
        new_safe = tl.where(new_max == neg_inf, 0.0, new_max)
        old_weight = tl.exp(merge_max - new_safe)
        weight = tl.exp(x - new_safe)  # 0 for a segment the row does not see
        seg_out = acc / tl.where(seen, l, 1.0)[:, None]
        out = out * old_weight[:, None] + seg_out * weight[:, None]
        merge_sum = merge_sum * old_weight + weight
        merge_max = new_max
    out = out / tl.where(merge_sum > 0.0, merge_sum, 1.0)[:, None]  # a row that sees no key: zeros
    tl.store(
        out_ptr + b * sob + h[:, None] * soh + rows_q[:, None] * som + cols_d[None, :] * sod,
        out.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & d_ok[None, :],
    )


def segmented_attention_triton(
    q: torch.Tensor,  # [B, Hq, Lq, D]
    k: torch.Tensor,  # [B, Hk, Lk, D]
    v: torch.Tensor,  # [B, Hk, Lk, D]
    segment_ids: torch.Tensor,  # [Lk] int64 in 0 .. S-1
    temperature: torch.Tensor,  # [S]
    lse_scale: torch.Tensor,  # [S]
    mask: torch.Tensor | None = None,  # bool, broadcastable to [B, Hq, Lq, Lk]
    sm_scale: float | None = None,
) -> torch.Tensor:
    """Segmented attention merged by log-sum-exp; see the reference for the formula. ``[B, Hq, Lq, D]``."""
    check_segmented_inputs(q, k, v, segment_ids, temperature, lse_scale)
    batch, heads, lq, dim = q.shape
    lk, segments = k.shape[2], temperature.shape[0]
    scale = dim**-0.5 if sm_scale is None else sm_scale
    segment_ids, temperature, lse_scale = (x.to(q.device) for x in (segment_ids, temperature, lse_scale))
    order = torch.argsort(segment_ids, stable=True).to(torch.int32)  # [Lk]: keys grouped by segment
    counts = torch.bincount(segment_ids, minlength=segments)
    bounds = torch.zeros(segments + 1, dtype=torch.int32, device=q.device)
    bounds[1:] = torch.cumsum(counts, 0)
    out = torch.empty_like(q)
    if mask is None:
        mask_arg, mask_strides = order, (0, 0, 0, 0)  # never read
    else:
        mask_arg = mask.to(torch.bool).expand(batch, heads, lq, lk).view(torch.uint8)
        mask_strides = mask_arg.stride()
    kv_heads, group = k.shape[1], heads // k.shape[1]
    block_m = 16 if group * lq <= 16 else 32
    grid = (triton.cdiv(group * lq, block_m), batch * kv_heads)
    _segmented_attention_kernel[grid](
        q, k, v, out, order, bounds,
        temperature.float().contiguous(), lse_scale.float().contiguous(), mask_arg,
        float(scale), kv_heads, group, lq, dim, segments,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *mask_strides,
        HAS_MASK=mask is not None, BLOCK_M=block_m, BLOCK_N=32,
        BLOCK_D=max(16, triton.next_power_of_2(dim)),
    )  # fmt: skip
    return out
