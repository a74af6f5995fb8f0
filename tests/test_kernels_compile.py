"""The Triton kernels compile for a GPU (sm_80: PTX, then ptxas to a cubin) on a machine without one.

The interpreter checks what the kernels compute; this checks that the compiler accepts them (dot shapes,
types, loop-carried values), which the interpreter does not. It compiles ahead of time for an explicit
target, in a fresh interpreter without ``TRITON_INTERPRET`` and with a private cache, and launches nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from rag.kernels import cad_combine_triton, pq_adc_triton, segmented_attention_triton

POINTERS = {"order_ptr": "*i32", "bounds_ptr": "*i32", "mask_ptr": "*u8", "codes_ptr": "*i64"}
FLOATS = {"sm_scale", "alpha"}


def compile_for_sm80(kernel, **constexprs):
    signature = {
        name: "constexpr" if name in constexprs
        else POINTERS.get(name, "*fp32") if name.endswith("_ptr")
        else "fp32" if name in FLOATS
        else "i32"
        for name in kernel.arg_names
    }
    fixed = {(kernel.arg_names.index(name),): value for name, value in constexprs.items()}
    compiled = triton.compile(ASTSource(kernel, signature, fixed), target=GPUTarget("cuda", 80, 32))
    assert compiled.asm["cubin"], kernel
    print(kernel.__name__, "ok")


for has_mask in (True, False):
    compile_for_sm80(segmented_attention_triton._segmented_attention_kernel, HAS_MASK=has_mask, BLOCK_M=32,
                     BLOCK_N=32, BLOCK_D=64)
compile_for_sm80(pq_adc_triton._adc_forward_kernel, BLOCK_Q=16, BLOCK_N=64)
compile_for_sm80(pq_adc_triton._adc_backward_kernel, BLOCK_Q=16, BLOCK_N=32, BLOCK_C=128)
compile_for_sm80(cad_combine_triton._cad_combine_kernel, BLOCK=4096)
"""


def test_every_kernel_compiles_for_sm80(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path / "triton-cache"), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [
        *["_segmented_attention_kernel", "ok"] * 2,
        *["_adc_forward_kernel", "ok", "_adc_backward_kernel", "ok", "_cad_combine_kernel", "ok"],
    ]
