"""Options several commands share, defined once so that they read and behave the same everywhere.

Light on purpose: imported while the parser is built (no NumPy, no OpenCV).
"""

from __future__ import annotations

import argparse


def add_progress_flags(p: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--no-progress``: always / never draw a bar; neither: only on a terminal (stderr)."""
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="always show a progress bar (default: only when stderr is a terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")


def add_backend_flag(p: argparse.ArgumentParser, **kwargs: object) -> None:
    """``--backend``, its choices read from the database registry (datakit.db.BACKENDS)."""
    from datakit.db import backend_names
    p.add_argument("--backend", choices=backend_names(), **kwargs)  # type: ignore[arg-type]


def add_cluster_flags(p: argparse.ArgumentParser, *, resources: bool = True) -> None:
    """``--scheduler tcp://HOST:PORT`` / ``--cluster local:N`` (and ``--resources``): run the stage's
    partitions on a Dask cluster (datakit.cluster); without them the command runs as it always has."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run the partitions on the Dask cluster of this scheduler (tcp://HOST:8786)")
    where.add_argument("--cluster", metavar="local:N",
                       help="run the partitions on a Dask LocalCluster of N worker processes started here")
    if resources:
        p.add_argument("--resources", metavar="NAME=N[,...]",
                       help="with --scheduler/--cluster: run only on workers started with these Dask resources "
                            "(for example GPU=1)")


def cluster_executor(args: argparse.Namespace):  # -> datakit.parallel.Executor | None
    """The Dask executor `args` ask for (see add_cluster_flags), or None when they ask for none."""
    scheduler, cluster = getattr(args, "scheduler", None), getattr(args, "cluster", None)
    if not scheduler and not cluster:
        if getattr(args, "resources", None):
            from datakit.errors import ConfigError
            raise ConfigError("--resources applies to Dask workers: give --scheduler or --cluster too")
        return None
    from datakit.cluster import open_executor
    return open_executor(scheduler=scheduler, cluster=cluster, resources=getattr(args, "resources", None))
