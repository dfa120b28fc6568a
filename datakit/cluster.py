"""The Dask engine behind the executor seam, and the one place that turns CLI options into an executor.

``DaskExecutor`` implements ``datakit.parallel.Executor`` over a
``dask.distributed.Client``: the same partition functions that run in local
processes run on a cluster's workers unchanged. Dask is an optional extra
(``datakit[dist]``); nothing here imports it until a cluster is asked for.

Faults: the scheduler reschedules the tasks of a worker that dies; a task whose
workers die ``retries`` + Dask's ``allowed-failures`` times fails with
``KilledWorker``, which the coordinator reports naming its partition. Tasks are
submitted with ``pure=False`` so that two partitions with equal arguments
(re-runs) are never merged into one.

Data errors: a task that raises a ``DatakitError`` (a bad image under ``--strict``,
a corrupt record: one line naming the list line or record) would fail the same
way on any worker, so it is not retried: the task returns the error as a value
and its future raises it on the client. Dask's retries were running such a
partition three times, and each worker printed a "Compute Failed" traceback
into the user's terminal before the one line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from datakit.errors import ConfigError, DatakitError
from datakit.parallel import Executor, InlineExecutor, LocalExecutor, TaskFuture

_LOCAL = re.compile(r"^local:(\d+)$")


def _distributed() -> Any:
    try:
        import distributed  # noqa: PLC0415 - optional extra, imported only when a cluster is asked for
    except ImportError:
        raise ConfigError("a Dask cluster needs the dist extra: pip install 'datakit[dist]'") from None
    return distributed


class _DataError:
    """A DatakitError raised by a task, carried back as its result (see the module docstring)."""

    def __init__(self, error: DatakitError) -> None:
        self.error = error


class _Attempt:
    """``fn`` run on a worker, with a DatakitError returned as a `_DataError` instead of raised."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "task")  # the task's name on the dashboard (write_shard-...)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.fn(*args, **kwargs)
        except DatakitError as err:
            return _DataError(err)


class _Future:
    """A Dask future whose ``result()`` raises the DatakitError its task returned."""

    __slots__ = ("inner",)

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def result(self, timeout: float | None = None) -> Any:
        out = self.inner.result(timeout=timeout)
        if isinstance(out, _DataError):
            raise out.error
        return out

    def cancel(self) -> bool:
        return bool(self.inner.cancel())

    def done(self) -> bool:
        return bool(self.inner.done())

    def cancelled(self) -> bool:
        """Whether it was cancelled before it ran (assemble counts those after a stop)."""
        return bool(self.inner.cancelled())


class DaskExecutor(Executor):
    """Partitions as tasks of a Dask cluster (a scheduler address or an in-process LocalCluster).

    ``resources`` (e.g. ``{"GPU": 1}``) restricts tasks to workers started with
    matching ``--resources``; ``retries`` re-runs a task that raised, on top of
    the scheduler's own rescheduling after a lost worker.
    """

    name = "dask"

    def __init__(self, client: Any = None, *, scheduler: str | None = None, local_workers: int | None = None,
                 resources: dict[str, float] | None = None, retries: int = 2, timeout: float = 20.0) -> None:
        distributed = _distributed()
        self._cluster = None
        self._owns_client = client is None
        self.resources = resources or None
        self.retries = retries
        if client is None:
            if local_workers is not None:
                # the local workers offer the resources asked for (`--cluster local:1 --resources GPU=1` on a
                # one-GPU machine); otherwise no worker would have them and the tasks would wait for ever
                # The scheduler serves its HTTP routes even without a dashboard, on 8787 unless told:
                # a free port on loopback, so another Dask cluster on this machine (a notebook's) does
                # not make every command print "Port 8787 is already in use" (a UserWarning) first.
                # The workers print into this terminal: only their errors, not Dask's warnings about
                # its own bookkeeping (a task cancelled by Ctrl-C or by a failed sibling "ended with
                # CancelledError"); what matters comes back to the client as one line.
                self._cluster = distributed.LocalCluster(
                    n_workers=local_workers, threads_per_worker=1, processes=True,
                    host="127.0.0.1", dashboard_address=None, resources=self.resources,
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}, silence_logs=logging.ERROR)
                client = distributed.Client(self._cluster, timeout=timeout)
            elif scheduler:
                try:
                    client = distributed.Client(scheduler, timeout=timeout)
                except OSError as err:  # includes asyncio/Tornado TimeoutError on old Pythons
                    raise ConfigError(f"cannot reach the Dask scheduler at {scheduler}: {err}") from None
            else:
                raise ConfigError("DaskExecutor needs a client, a scheduler address or local_workers")
        self.client = client
        self._as_completed = distributed.as_completed

    @property
    def workers(self) -> int:  # type: ignore[override]
        """Threads across the cluster's workers now (at least 1): how many partitions run at once."""
        info = self.client.scheduler_info()
        return max(1, sum(int(w.get("nthreads", 1)) for w in info.get("workers", {}).values()))

    def worker_pids(self) -> dict[str, int]:
        """Worker address -> process id (for fault tests and status lines)."""
        import os  # noqa: PLC0415
        return dict(self.client.run(os.getpid))

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskFuture:
        return _Future(self.client.submit(_Attempt(fn), *args, pure=False, retries=self.retries,
                                          resources=self.resources, **kwargs))

    def as_completed(self, futures: Iterable[TaskFuture]) -> Iterator[TaskFuture]:
        ours = {f.inner: f for f in futures}  # type: ignore[attr-defined]
        return (ours[inner] for inner in self._as_completed(list(ours)))

    def cancel(self, futures: Iterable[TaskFuture]) -> None:
        inner = [f.inner for f in futures]  # type: ignore[attr-defined]
        if inner:
            self.client.cancel(inner)

    def close(self) -> None:
        if self._owns_client and self.client is not None:
            self.client.close()
            self.client = None
            if self._cluster is not None:
                self._cluster.close()
                self._cluster = None


def parse_resources(text: str | None) -> dict[str, float] | None:
    """``"GPU=1,MEM=4e9"`` -> ``{"GPU": 1.0, "MEM": 4e9}`` (Dask worker resources)."""
    if not text:
        return None
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--resources: {part!r} is not NAME=NUMBER (for example GPU=1)") from None
    return out


def open_executor(*, scheduler: str | None = None, cluster: str | None = None, workers: int = 1,
                  kind: str = "processes", resources: str | None = None) -> Executor:
    """The executor the options ask for: ``--scheduler tcp://HOST:PORT``, ``--cluster local:N``, else local.

    Without a scheduler or cluster nothing changes for the caller: ``workers``
    local processes (or threads), or this process when ``workers <= 1``.
    """
    if scheduler and cluster:
        raise ConfigError("give --scheduler or --cluster, not both")
    if cluster:
        m = _LOCAL.match(cluster)
        if not m or int(m.group(1)) < 1:
            raise ConfigError(f"--cluster {cluster!r}: expected local:N with N >= 1 (for example local:2)")
        return DaskExecutor(local_workers=int(m.group(1)), resources=parse_resources(resources))
    if scheduler:
        if "://" not in scheduler:
            raise ConfigError(f"--scheduler {scheduler!r}: expected an address such as tcp://HOST:8786")
        return DaskExecutor(scheduler=scheduler, resources=parse_resources(resources))
    if resources:
        raise ConfigError("--resources applies to Dask workers: give --scheduler or --cluster too")
    if workers <= 1:
        return InlineExecutor()
    return LocalExecutor(workers, kind)


__all__ = ["DaskExecutor", "open_executor", "parse_resources"]
