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


def test_gemm_speed_is_measured_and_a_missing_library_is_left_out(monkeypatch):
    from benchmarks import machine

    assert machine.gemm_gflops(8, 16, 32, budget=0.0) > 0
    calls = []

    def fake(m, k, n, budget=0.2, library="numpy"):
        calls.append((m, k, n, library))
        if library == "torch":
            raise ImportError("no torch")
        return 12.3
    monkeypatch.setattr(machine, "gemm_gflops", fake)
    line = machine.gemm_line()
    assert line.count("numpy 12") == len(machine.GEMM_SHAPES) and "torch" not in line
    assert {c[:3] for c in calls} == set(machine.GEMM_SHAPES.values())


def test_largest_layers_sorts_by_forward_plus_backward():
    from benchmarks.layer_profile import largest_layers

    report = {"forward_ms": 3.0, "backward_ms": 4.5, "layers": [
        {"name": "a", "forward_ms": 1.0, "backward_ms": 0.0}, {"name": "b", "forward_ms": 0.5, "backward_ms": 2.0},
        {"name": "c", "forward_ms": 1.5, "backward_ms": 2.5}]}
    assert largest_layers(report, count=2) == \
        "forward+backward 7.5 ms; largest layers, ms forward+backward: c 1.50+2.50, b 0.50+2.00"


def test_make_bench_runs_without_the_workplaces_openblas_overrides():
    from benchmarks.run_all import drop_blas_overrides

    env = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576", "PATH": "/bin"}
    assert drop_blas_overrides(env) == ["OPENBLAS_CORETYPE=Haswell", "OPENBLAS_L2_SIZE=1048576"]
    assert env == {"PATH": "/bin"}
    kept = {"OPENBLAS_CORETYPE": "Haswell", "DATAKIT_BENCH_KEEP_BLAS_ENV": "1"}
    assert drop_blas_overrides(kept) == [] and kept["OPENBLAS_CORETYPE"] == "Haswell"
