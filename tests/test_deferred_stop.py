"""datakit.deferred_stop: the first Ctrl-C / SIGTERM waits for a consistent point, a second one stops at once."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from datakit.deferred_stop import DeferredStop, StoppedAtOnce


def _ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)  # delivered to the main thread before the next bytecode


def test_the_first_ctrl_c_is_a_flag_and_is_raised_when_the_block_ends():
    reached = []
    with pytest.raises(KeyboardInterrupt) as err, DeferredStop() as stop:
        _ctrl_c()
        assert stop.requested and stop.pending == signal.SIGINT
        reached.append("the rest of the block")
    assert reached == ["the rest of the block"] and not isinstance(err.value, StoppedAtOnce)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_a_second_signal_stops_at_once_and_more_are_ignored_while_unwinding():
    cleaned = []
    with pytest.raises(StoppedAtOnce), DeferredStop() as stop:
        try:
            _ctrl_c()
            _ctrl_c()
            pytest.fail("the second Ctrl-C did not stop the block")
        finally:
            _ctrl_c()  # a third, during the cleanup: ignored, the cleanup ends
            cleaned.append(True)
    assert stop.at_once and cleaned == [True]


def test_the_first_signal_decides_how_the_stop_is_delivered():
    """SIGTERM then Ctrl-C: the SIGTERM handler it replaced is the one run (convert names the stop by it)."""
    seen: list[int] = []

    def on_sigterm(signum: int, frame: object) -> None:
        seen.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with pytest.raises(StoppedAtOnce), DeferredStop():
            os.kill(os.getpid(), signal.SIGTERM)
            _ctrl_c()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [signal.SIGTERM]


def test_an_error_in_the_block_wins_over_a_held_back_signal():
    with pytest.raises(ValueError), DeferredStop():
        _ctrl_c()
        raise ValueError("the block failed")


def test_a_signal_left_at_its_default_is_not_held_back():
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with DeferredStop():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_outside_the_main_thread_nothing_is_held_back():
    got: list[object] = []

    def run() -> None:
        with DeferredStop() as stop:
            got.append(signal.getsignal(signal.SIGINT))
            got.append(stop.requested)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert got == [signal.default_int_handler, False]
