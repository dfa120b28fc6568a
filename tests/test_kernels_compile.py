"""The CUDA kernels compile, checked without a GPU.

CuPy compiles trainer/kernels_cuda.py's source with NVRTC on first use, which
only happens on a GPU machine. Where the CUDA toolkit's nvcc is installed (it
is on the development and CI machines) we compile the same source to PTX for
Hopper, so a syntax or type error in a kernel fails here, not on the first
GPU run. Whether the kernels compute the same numbers as the NumPy twins is
tests/test_kernels.py's job, on a GPU.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from trainer.kernels_cuda import module_source

KERNELS = ["im2col", "col2im", "max_pool_fwd", "max_pool_bwd", "ave_pool_fwd", "ave_pool_bwd", "lrn_fwd", "lrn_bwd"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kernels_compile_to_ptx(tmp_path, dtype):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc (CUDA toolkit) is not installed; the kernels are compiled on first GPU use instead")
    src = tmp_path / "kernels.cu"
    src.write_text(module_source(dtype))
    result = subprocess.run([nvcc, "--ptx", "-arch=sm_90", "-o", str(tmp_path / "kernels.ptx"), str(src)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    ptx = (tmp_path / "kernels.ptx").read_text()
    for name in KERNELS:  # extern "C": the launcher looks them up by these plain names
        assert f".entry {name}(" in ptx, f"kernel {name} missing from the PTX"
