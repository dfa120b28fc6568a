"""tests/ctrl_c.py: the in-process Ctrl-C that the interrupt tests press, sent again when Python drops it."""

from __future__ import annotations

import threading
import time

import pytest

from tests.ctrl_c import ctrl_c_when


def test_a_ctrl_c_that_python_dropped_is_sent_again():
    class SlowToDie:
        def __del__(self) -> None:
            time.sleep(1.0)  # the first Ctrl-C lands here: Python prints "Exception ignored" and drops it

    ready = threading.Event()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt), ctrl_c_when(ready.is_set):
        doomed = SlowToDie()
        ready.set()
        del doomed
        time.sleep(10)  # the second Ctrl-C ends this
    assert time.monotonic() - started < 8


def test_nothing_is_sent_before_the_condition_holds():
    with ctrl_c_when(lambda: False, timeout=0.2):
        time.sleep(0.4)
