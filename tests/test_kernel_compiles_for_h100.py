"""The kernels compile for an H100 (sm_90) with the ptxas bundled in triton, without a GPU:
the interpreter runs the Python semantics only, so this catches what the GPU compiler rejects
(layouts, dot shapes, shared memory over the limit) on a CPU-only machine."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

COMPILE = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from cmgl_dist.kernels import local_similarity as ls

dtype = sys.argv[1]
config = ls._configs()[0]
common = dict(X=f"*{dtype}", MASK="*u8", NWORDS="*i32", Y=f"*{dtype}", S="*fp32", LSE="*fp32", DELTA="*fp32",
              GS="*fp32", GX="*fp32", GY="*fp32", T="i32", I="i32", W="i32", R="i32", D="i32",
              stride_xt="i32", stride_xw="i32", stride_mt="i32", stride_yi="i32", stride_yr="i32",
              gamma1="fp32", gamma2="fp32", eps="fp32")
constexprs = dict(config.kwargs, BLOCK_R=512, SAVE_DELTA=True,
                  DOT_PRECISION="ieee" if dtype == "fp32" else "tf32")
shared = {}
for kernel in (ls._forward_kernel, ls._backward_kernel):
    fn = kernel.fn
    mine = {p: v for p, v in constexprs.items() if p in fn.arg_names}
    signature = {p: "constexpr" if p in mine else common[p] for p in fn.arg_names}
    compiled = triton.compile(ASTSource(fn, signature, mine), target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
    assert compiled.asm["cubin"], fn.__name__
    shared[fn.__name__] = compiled.metadata.shared
print(json.dumps(shared))
"""
# Located without importing triton: importing it here, before the interpreter tests set
# TRITON_INTERPRET, would fix the JIT mode for the whole session.
PTXAS = Path(importlib.util.find_spec("triton").origin).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA tests compile the kernels for this GPU")
@pytest.mark.skipif(not PTXAS.exists(), reason=f"no ptxas bundled with triton at {PTXAS}")
def test_kernels_compile_for_sm90(dtype="bf16"):  # the training dtype; fp32 takes ~50 s more
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CMGL_KERNEL_AUTOTUNE"] = "0"
    run = subprocess.run([sys.executable, "-c", COMPILE, dtype], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    shared = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(shared) == {"_forward_kernel", "_backward_kernel"}
    assert all(0 < size <= 227 * 1024 for size in shared.values()), shared
