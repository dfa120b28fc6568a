"""datakit.parallel: the executor seam every fan-out stage submits its partitions through."""

from __future__ import annotations

import os

import pytest

from datakit.parallel import InlineExecutor, LocalExecutor, run_all


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
