"""datakit.cluster: the Dask executor behind the same seam as the local one, on a real LocalCluster."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from datakit.errors import ConfigError, ImageError
from datakit.parallel import InlineExecutor, LocalExecutor, run_all

distributed = pytest.importorskip("distributed", reason="the dist extra (dask.distributed) is not installed")

from datakit.cluster import DaskExecutor, open_executor, parse_resources  # noqa: E402


def cube_and_pid(x: int) -> tuple[int, int]:
    return x ** 3, os.getpid()


def refuse_four(x: int) -> int:
    if x == 4:
        raise ValueError("partition 4 has a bad record")
    return x


def slow_once(marker: str) -> int:
    """Record this worker's pid, then work long enough to be killed; a rerun elsewhere finishes."""
    path = Path(marker)
    first = not path.exists()
    path.write_text(str(os.getpid()))
    if first:
        time.sleep(30)
    return os.getpid()


def test_dask_executor_gives_the_same_results_as_inline(dask2):
    assert isinstance(dask2, DaskExecutor)
    args = [(i,) for i in range(12)]
    dask_out = run_all(dask2, cube_and_pid, args)
    inline_out = run_all(InlineExecutor(), cube_and_pid, args)
    assert [c for c, _ in dask_out] == [c for c, _ in inline_out]
    worker_pids = set(dask2.worker_pids().values())
    assert {pid for _, pid in dask_out} <= worker_pids and os.getpid() not in worker_pids
    assert dask2.workers == 2


def test_a_failing_partition_raises_its_own_error_on_the_cluster(dask2):
    with pytest.raises(ValueError, match="partition 4 has a bad record"):
        run_all(dask2, refuse_four, [(i,) for i in range(6)])


def count_and_fail(marker: str, kind: str) -> None:
    """Append one line per attempt to `marker`, then fail: with a data error or with a bug."""
    with open(marker, "a") as f:
        f.write("attempt\n")
    if kind == "data":
        raise ImageError("list.txt:7: a.jpg: cannot be decoded as an image (--strict)")
    raise RuntimeError("a bug")


def test_a_data_error_on_a_worker_is_raised_once_and_not_retried(dask2, tmp_path):
    """A bad record fails the same way on every worker: it comes back as its own error at once,
    whereas any other exception is still retried (a flaky worker, a full local disk)."""
    data, bug = tmp_path / "data", tmp_path / "bug"
    with pytest.raises(ImageError, match=r"^list.txt:7: a.jpg: cannot be decoded"):
        dask2.submit(count_and_fail, str(data), "data").result(timeout=60)
    assert data.read_text().count("attempt") == 1
    with pytest.raises(RuntimeError, match="a bug"):
        dask2.submit(count_and_fail, str(bug), "bug").result(timeout=60)
    assert bug.read_text().count("attempt") == 1 + dask2.retries


def test_a_worker_killed_mid_task_has_the_task_rerun_elsewhere(dask2, tmp_path):
    marker = tmp_path / "pid"
    future = dask2.submit(slow_once, str(marker))
    deadline = time.time() + 30
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    victim = int(marker.read_text())
    os.kill(victim, signal.SIGKILL)
    assert future.result(timeout=60) != victim


def test_open_executor_without_a_cluster_is_local():
    assert isinstance(open_executor(workers=1), InlineExecutor)
    ex = open_executor(workers=2, kind="threads")
    try:
        assert isinstance(ex, LocalExecutor) and ex.workers == 2
    finally:
        ex.close()


@pytest.mark.parametrize("kwargs, message", [
    ({"cluster": "local:0"}, "local:N"),
    ({"cluster": "yarn"}, "local:N"),
    ({"scheduler": "10.0.0.1:8786"}, "tcp://"),
    ({"scheduler": "tcp://a:1", "cluster": "local:1"}, "not both"),
    ({"resources": "GPU=1"}, "--scheduler or --cluster"),
])
def test_bad_cluster_options_are_one_clear_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        open_executor(**kwargs)


def test_unreachable_scheduler_is_one_clear_error():
    with pytest.raises(ConfigError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        DaskExecutor(scheduler="tcp://127.0.0.1:9", timeout=2)


def test_resources_parse():
    assert parse_resources("GPU=1,MEM=4e9") == {"GPU": 1.0, "MEM": 4e9}
    with pytest.raises(ConfigError, match="NAME=NUMBER"):
        parse_resources("GPU")


def test_a_local_cluster_offers_the_resources_its_tasks_ask_for():
    with open_executor(cluster="local:1", resources="GPU=1") as ex:
        assert ex.resources == {"GPU": 1.0}
        assert run_all(ex, cube_and_pid, [(2,), (3,)])[1][0] == 27
        assert all(w["resources"] == {"GPU": 1.0} for w in ex.client.scheduler_info()["workers"].values())


def test_a_local_cluster_beside_another_dask_cluster_starts_without_a_warning():
    """`--cluster local:N` while a notebook's Dask cluster holds port 8787: no 'Port 8787 is already
    in use' warning printed before every command (the scheduler's HTTP routes take a free port)."""
    import socket
    import warnings

    holder = socket.socket()
    try:
        try:
            holder.bind(("127.0.0.1", 8787))
            holder.listen()
        except OSError:
            pass            # already held (another cluster runs here): the same situation
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ex = open_executor(cluster="local:1")
            try:
                assert run_all(ex, cube_and_pid, [(3,)])[0][0] == 27
            finally:
                ex.close()
        assert not [w for w in caught if "already in use" in str(w.message)]
    finally:
        holder.close()


def test_cancelled_tasks_say_so(dask2):
    """After a stop, assemble counts the partitions it cancelled by asking each future `cancelled()`
    (the futures the executor hands out must answer it, as Dask's own do)."""
    futures = [dask2.submit(time.sleep, 1.0) for _ in range(4)]   # 2 workers: two of them wait
    assert not any(f.cancelled() for f in futures)
    dask2.cancel(futures)
    assert all(f.cancelled() for f in futures)
