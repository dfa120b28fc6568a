"""trainer.backend: choosing numpy or cupy, host copies, and the no-GPU path's messages."""

from __future__ import annotations

import numpy as np
import pytest

from datakit.errors import ConfigError
from trainer import backend


def test_cpu_is_numpy_and_host_helpers_are_no_ops_there():
    assert backend.select("cpu") is np
    a = np.arange(3.0)
    assert backend.to_host(a) is a
    np.testing.assert_array_equal(backend.to_host([1, 2]), [1, 2])
    assert backend.get_array_module(a) is np
    backend.synchronize(np)
    assert backend.device_name(np) == "CPU (NumPy)"


def test_bad_device_name_is_a_config_error():
    with pytest.raises(ConfigError, match="auto, cpu or gpu, not 'tpu'"):
        backend.select("tpu")


@pytest.mark.skipif(backend.gpu_available(), reason="checks the machine-without-a-GPU path")
def test_without_a_gpu_auto_falls_back_and_gpu_says_why():
    assert backend.select("auto") is np
    reason = backend.gpu_unavailable_reason()
    assert reason.startswith("CuPy")
    with pytest.raises(ConfigError, match=r"--device gpu was asked for but CuPy .*; use --device cpu"):
        backend.select("gpu")
