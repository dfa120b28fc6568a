"""trainer.prefetch: the two-stage Prefetcher and the decode pool, on their own (no layers)."""

from __future__ import annotations

import threading

import pytest

from datakit.threadpool import decode_pool
from trainer.prefetch import Prefetcher


def test_batches_come_in_order_from_the_start_index_one_or_two_stages():
    one = Prefetcher(lambda k: k * 10, start=3)
    two = Prefetcher(lambda k, read: (k, read), start=3, read=lambda k: f"r{k}")
    try:
        assert [one.get() for _ in range(5)] == [30, 40, 50, 60, 70]
        assert [two.get() for _ in range(3)] == [(3, "r3"), (4, "r4"), (5, "r5")]
        assert one.next_index == 8 and two.next_index == 6
    finally:
        one.close()
        two.close()


def test_an_error_in_either_stage_reaches_the_consumer_in_order():
    def make(k, read=None):
        if k == 2:
            raise RuntimeError("make failed at 2")
        return k

    def read(k):
        if k == 4:
            raise OSError("read failed at 4")
        return k

    p = Prefetcher(make)
    assert [p.get(), p.get()] == [0, 1]
    with pytest.raises(RuntimeError, match="make failed at 2"):
        p.get()
    q = Prefetcher(lambda k, r: r, start=3, read=read)
    assert q.get() == 3
    with pytest.raises(OSError, match="read failed at 4"):
        q.get()


def test_restart_drops_what_was_prepared_and_resumes_at_the_index():
    made: list[int] = []
    p = Prefetcher(lambda k: made.append(k) or k, depth=2, name="prefetch-under-test")
    assert p.get() == 0
    p.restart(10)
    assert [p.get(), p.get()] == [10, 11]
    p.close()
    assert not any(t.name == "prefetch-under-test" and t.is_alive() for t in threading.enumerate())
    assert made[:1] == [0] and 10 in made


def test_decode_pool_is_one_shared_pool():
    assert decode_pool() is decode_pool()
    assert list(decode_pool().map(lambda x: x * x, range(5))) == [0, 1, 4, 9, 16]
