"""datakit.parallel: the executor seam every fan-out stage submits its partitions through, the ordered map,
the shared-memory arena (datakit.arena) and the progress counter."""

from __future__ import annotations

import os

import numpy as np
import pytest

from datakit.arena import ArenaMarker, MarkerKind, SharedArena
from datakit.parallel import InlineExecutor, LocalExecutor, ProgressCounter, map_ordered, report_progress, run_all


def square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("partition 3 is bad")
    return x


@pytest.mark.parametrize("make", [InlineExecutor, lambda: LocalExecutor(2), lambda: LocalExecutor(2, "threads")])
def test_run_all_returns_results_in_submission_order(make):
    with make() as ex:
        out = run_all(ex, square_and_pid, [(i,) for i in range(10)])
    assert [sq for sq, _ in out] == [i * i for i in range(10)]


def test_process_executor_runs_partitions_in_other_processes():
    with LocalExecutor(2) as ex:
        pids = {pid for _, pid in run_all(ex, square_and_pid, [(i,) for i in range(8)])}
    assert os.getpid() not in pids


def test_inline_executor_runs_in_this_process():
    with InlineExecutor() as ex:
        assert {pid for _, pid in run_all(ex, square_and_pid, [(1,), (2,)])} == {os.getpid()}


@pytest.mark.parametrize("make", [InlineExecutor, lambda: LocalExecutor(2)])
def test_a_failing_partition_raises_its_own_error(make):
    with make() as ex, pytest.raises(ValueError, match="partition 3 is bad"):
        run_all(ex, fail_on_three, [(i,) for i in range(6)])


def test_as_completed_yields_every_future_once():
    with LocalExecutor(2, "threads") as ex:
        futures = [ex.submit(square_and_pid, i) for i in range(5)]
        done = list(ex.as_completed(futures))
    assert sorted(id(f) for f in done) == sorted(id(f) for f in futures)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="processes"):
        LocalExecutor(2, "fibers")


# -- the ordered map and its shared-memory arena ---------------------------------------------------------------


def payloads(scale: int, chunk: list[int], slot) -> list[tuple]:
    """A partition function for map_ordered: bytes and an array per item, in the arena when there is room."""
    out = []
    for i in chunk:
        data = bytes([i % 256]) * (i % 5000 + 1)
        array = np.full((2, 3), i * scale, np.int64)
        if slot is not None:
            data = slot.put_bytes(data) or data
            array = slot.put_array(array) if slot.room >= array.nbytes else array
        out.append((i, data, array, os.getpid()))
    return out


@pytest.mark.parametrize("workers,slot_bytes", [(1, 0), (2, 0), (2, 64 << 10), (2, 6000)])
def test_map_ordered_yields_in_input_order_whatever_way_payloads_travel(workers, slot_bytes):
    taken = []

    class Recording(SharedArena):
        def take(self, marker):
            taken.append(marker)
            return super().take(marker)

    seen = []
    for (i, data, array, _), lease in map_ordered(payloads, range(300), args=(7,), workers=workers, batch=3,
                                                   slot_bytes=slot_bytes, spare_slots=1, arena_factory=Recording):
        assert bytes(data) == bytes([i % 256]) * (i % 5000 + 1)
        assert array.tolist() == [[i * 7] * 3] * 2
        seen.append(i)
        if lease is not None:
            lease.release()
    assert seen == list(range(300))
    if slot_bytes:
        kinds = {m.kind for m in taken}
        assert kinds == {MarkerKind.VIEW, MarkerKind.COPY} and all(isinstance(m, ArenaMarker) for m in taken)
    else:
        assert not taken


def test_an_arena_slot_refuses_what_does_not_fit_and_lends_views_until_released():
    arena = SharedArena(2, 100)
    slot = arena.acquire()
    writer = arena.slot(slot)
    assert writer.put_bytes(b"x" * 101) is None
    marker = writer.put_bytes(b"y" * 60)
    assert marker == ArenaMarker(MarkerKind.VIEW, slot * 100, 60) and writer.room == 40
    assert writer.put_bytes(b"z" * 41) is None
    view = arena.take(marker)
    assert bytes(view) == b"y" * 60
    arena.lend(slot, 1)
    other = arena.acquire()
    assert arena.acquire() is None  # both slots in use
    arena.release(slot)
    assert arena.acquire() == slot and other != slot
    view.release()
    arena.close()


def counted(n: int) -> int:
    for _ in range(n):
        report_progress(1)
    return n


def test_partitions_report_progress_to_the_coordinator_through_a_shared_counter():
    counter = ProgressCounter()
    with LocalExecutor(2, initializer=counter.install) as ex:
        assert run_all(ex, counted, [(100,), (250,)]) == [100, 250]
    assert counter.value == 350
    with InlineExecutor() as ex:  # nothing installed here: the same function runs, counting nothing
        assert run_all(ex, counted, [(5,)]) == [5]
    assert counter.value == 350


def test_inline_executor_runs_no_partition_after_a_ctrl_c_in_one():
    """A Ctrl-C inside one inline partition was kept in its future and the later partitions still ran to
    the end (an interrupted sharded conversion went on writing every shard after it)."""
    ran: list[int] = []

    def part(i: int) -> int:
        ran.append(i)
        if i == 1:
            raise KeyboardInterrupt
        return i

    executor = InlineExecutor()
    futures = [executor.submit(part, i) for i in range(4)]
    assert ran == [0, 1] and futures[0].result() == 0
    for future in futures[1:]:
        with pytest.raises(KeyboardInterrupt):
            future.result()
    other = InlineExecutor()  # a fresh executor runs again; a plain error does not stop the rest
    assert [f.exception() is None for f in (other.submit(lambda: 1 / 0), other.submit(lambda: 2))] == [False, True]


def _own_pid(_: int) -> int:
    return os.getpid()


def test_a_worker_ends_on_sigterm_so_a_broken_pool_can_end_the_others():
    """A pool broken by a killed worker ends the others with SIGTERM. A worker killed while it held the
    result queue's lock leaves the others blocked on that lock, so SIGTERM is the only way they end: with
    SIGTERM ignored in workers, `datakit convert` hung there for good (seen in a full test run). A SIGTERM
    from any other process is dropped: ended by a group's SIGTERM, workers broke the pool under a
    coordinator that was stopping cleanly (CPython 3.11 then printed an InvalidStateError traceback)."""
    import concurrent.futures as cf
    import signal
    import time

    from datakit.workerpool import worker_pool

    import subprocess

    with worker_pool(1) as pool:
        pid = pool.submit(_own_pid, 0).result(timeout=60)
        # from another process (a group's SIGTERM, a job scheduler): dropped, the coordinator handles it
        subprocess.run(["kill", "-TERM", str(pid)], check=True)
        time.sleep(0.2)
        assert pool.submit(_own_pid, 0).result(timeout=30) == pid
        os.kill(pid, signal.SIGTERM)  # from the coordinator, as a broken pool ends its other workers
        deadline = time.monotonic() + 30
        with pytest.raises(cf.process.BrokenProcessPool):
            while time.monotonic() < deadline:  # the pool notices the death at its next task
                pool.submit(_own_pid, 0).result(timeout=30)
                time.sleep(0.05)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
