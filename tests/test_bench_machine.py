"""benchmarks.machine: the line every benchmark prints names the CPU, its AVX-512 and NumPy's BLAS kernels."""

from __future__ import annotations

import sys

import pytest

from benchmarks.machine import blas_kernels, cpu_model, describe


def test_the_line_names_cpu_avx512_and_blas_kernels(monkeypatch):
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    monkeypatch.delenv("OPENBLAS_L2_SIZE", raising=False)
    line = describe()
    assert line.startswith(f"machine: {cpu_model()} (AVX-512: ")
    assert f"NumPy BLAS kernels {blas_kernels()}," in line and "set: unset" not in line


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps (Linux only)")
def test_numpys_openblas_kernels_are_read_from_the_library():
    import numpy as np

    if "openblas" not in str(np.show_config(mode="dicts")).lower():
        pytest.skip("this NumPy is not built with OpenBLAS")
    name = blas_kernels()
    assert name != "unknown" and name.isprintable() and " " not in name


def test_a_forced_openblas_coretype_is_named(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "1048576")
    assert "(OPENBLAS_CORETYPE=Haswell OPENBLAS_L2_SIZE=1048576 set: unset both" in describe()
