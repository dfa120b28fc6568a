"""`trainer fit`: Caffe's ``caffe train`` put together from the solver, nets, weights and data.

Reads the solver prototxt; builds the TRAIN net and the TEST nets it names (paths
inside the solver and nets resolve against the current directory, as in Caffe);
copies ``--weights`` by layer name and logs what was copied, freshly initialised
or ignored; or resumes ``--snapshot X.solverstate``; installs the safety rails;
trains; turns SIGINT/SIGTERM into "snapshot, then exit".
"""

from __future__ import annotations

import random
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from datakit.errors import ConfigError, DatakitError
from datakit.formats import caffe_pb2
from datakit.formats.prototxt import read_net, read_solver
from datakit.formats.upgrade import upgrade_net

from trainer import backend, rails
from trainer.caffelog import CaffeLog
from trainer.solver import SolveResult, Solver

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


@dataclass
class FitOptions:
    solver: str
    weights: str | None = None
    snapshot: str | None = None
    device: str = "auto"
    gpu: int = 0
    log: str | None = None
    metrics: str | None = None
    max_iter: int | None = None
    stream: IO[str] | None = sys.stderr
    handle_signals: bool = True


def _locate(path: str, solver_dir: Path | None) -> str:
    """A net path from the solver: relative to the current directory as in Caffe; when nothing is
    there, beside the solver file (so shipped models/*/solver.prototxt run from any directory)."""
    if Path(path).exists() or solver_dir is None or Path(path).is_absolute():
        return path
    beside = solver_dir / path
    return str(beside) if beside.exists() else path


def _net_from(param: caffe_pb2.SolverParameter, which: str,
              solver_dir: Path | None = None) -> list[tuple[str, caffe_pb2.NetParameter]]:
    """(source name, NetParameter) for the train net ('train') or the test nets ('test')."""
    def read(path: str) -> caffe_pb2.NetParameter:
        return read_net(_locate(path, solver_dir))
    if which == "train":
        found = []
        if param.HasField("train_net_param"):
            found.append(("train_net_param", upgrade_net(param.train_net_param, source="train_net_param")))
        if param.train_net:
            found.append((param.train_net, read(param.train_net)))
        if param.HasField("net_param"):
            found.append(("net_param", upgrade_net(param.net_param, source="net_param")))
        if param.net:
            found.append((param.net, read(param.net)))
        if len(found) != 1:
            raise ConfigError("solver: give exactly one of net, net_param, train_net, train_net_param "
                              f"(found {len(found)})")
        return found
    nets = [("test_net_param", upgrade_net(p, source="test_net_param")) for p in param.test_net_param]
    nets += [(f, read(f)) for f in param.test_net]
    generic = len(param.test_iter) - len(nets)
    if generic > 0:
        if param.HasField("net_param"):
            nets += [("net_param", upgrade_net(param.net_param, source="net_param"))] * generic
        elif param.net:
            shared = read(param.net)
            nets += [(param.net, shared)] * generic
        else:
            raise ConfigError(f"solver: {len(param.test_iter)} test_iter values but only {len(nets)} test nets")
    return nets


def default_prefix(solver_path: str, param: caffe_pb2.SolverParameter) -> str:
    """snapshot_prefix, or (as newer Caffe) the solver file name without .prototxt."""
    if param.snapshot_prefix:
        return param.snapshot_prefix
    p = Path(solver_path)
    return str(p.with_suffix("")) if p.suffix == ".prototxt" else str(p)


def close_nets(nets: list[Any]) -> None:
    """Stop the data layers' prefetch threads and release their databases."""
    for net in nets:
        for layer in net.layers:
            close = getattr(layer, "close", None)
            if close is not None:
                close()


def build(opts: FitOptions) -> tuple[Solver, CaffeLog, Any]:
    """Everything ``fit`` needs, ready to ``solve()`` (separate so tests and the API can step)."""
    if opts.weights and opts.snapshot:
        raise ConfigError("give --weights or --snapshot, not both (a snapshot already holds its weights)")
    param = read_solver(opts.solver)
    if opts.max_iter is not None:
        param.max_iter = int(opts.max_iter)
    prefix = default_prefix(opts.solver, param)
    log = CaffeLog(opts.log or f"{prefix}.log", metrics_path=opts.metrics or f"{prefix}.metrics.csv",
                   stream=opts.stream)
    device = opts.device
    if device == "auto" and param.HasField("solver_mode") and param.solver_mode == param.CPU:
        device = "cpu"  # as Caffe: solver_mode CPU is obeyed unless --device says otherwise
    xp = backend.select(device, opts.gpu)
    seed = int(param.random_seed) if param.random_seed >= 0 else random.SystemRandom().randrange(2**31)
    log.info(f"Using {backend.device_name(xp)}; random_seed {seed}"
             + ("" if param.random_seed >= 0 else " (drawn: set random_seed in the solver to repeat this run)"))
    nets: list[Any] = []
    try:
        return _build(opts, param, prefix, log, xp, seed, nets)
    except BaseException:
        close_nets(nets)
        log.close()
        raise


def _build(opts: FitOptions, param, prefix: str, log: CaffeLog, xp, seed: int,
           nets: list[Any]) -> tuple[Solver, CaffeLog, Any]:
    from trainer.net import Net  # the core; imported late so `trainer plot` never needs it
    solver_dir = Path(opts.solver).parent
    [(train_src, train_param)] = _net_from(param, "train", solver_dir)
    state = caffe_pb2.NetState()
    state.CopyFrom(param.train_state)
    log.info(f"Creating training net from {train_src}")
    train_net = Net(train_param, TRAIN, xp=xp, stages=list(state.stage), level=state.level, seed=seed)
    nets.append(train_net)
    test_nets = []
    for i, (src, net_param) in enumerate(_net_from(param, "test", solver_dir)):
        ts = param.test_state[i] if i < len(param.test_state) else caffe_pb2.NetState()
        log.info(f"Creating test net (#{i}) specified by {src}")
        test_nets.append(Net(net_param, TEST, xp=xp, stages=list(ts.stage), level=ts.level, seed=seed + 1 + i))
        nets.append(test_nets[-1])
    for net in [train_net, *test_nets]:
        rails.install(net, warn=log.warning)
    solver = Solver(param, train_net, test_nets, log=log, snapshot_prefix=prefix, seed=seed)
    solver.final_test = opts.max_iter is not None
    if opts.weights:
        from trainer.weights import load_weights
        for path in [p for p in opts.weights.split(",") if p]:
            report = load_weights(train_net, path)
            log.info(f"Copying weights from {path}: {report.summary()}")
            for name in report.copied:
                log.info(f"  copied layer {name}")
            for name in report.initialised:
                log.info(f"  initialised layer {name} (not in {Path(path).name}: fresh weights from its fillers)")
            for name in report.ignored:
                log.info(f"  ignored layer {name} of {Path(path).name} (no layer of that name in the net)")
    if opts.snapshot:
        solver.restore(opts.snapshot)
    return solver, log, xp


def fit(opts: FitOptions) -> SolveResult:
    """Train as the solver says; returns what happened (snapshots, last test scores)."""
    solver, log, _ = build(opts)
    previous: dict[int, Any] = {}
    if opts.handle_signals and threading.current_thread() is threading.main_thread():
        def on_signal(signum, frame) -> None:
            name = signal.Signals(signum).name
            if solver.stop_reason:  # a second Ctrl-C: stop now, the snapshot is being written
                raise KeyboardInterrupt
            # Only a flag here: writing the log from a handler can land inside a write the handler
            # interrupted ("reentrant call inside BufferedWriter"); the solver says it at once.
            solver.request_stop(name)
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        # Overflow and NaN are the NaN rail's business (trainer.rails names the first
        # layer at fault); NumPy's own RuntimeWarnings would only bury that one line.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return solver.solve()
    except DatakitError as err:
        # Also in the log file, at glog's E severity, so whoever reads the log later (`trainer
        # board`) sees why the run ended; not on the stream, where the CLI prints it once.
        log.stream = None
        log.line(str(err), severity="E")
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        close_nets([solver.net, *solver.test_nets])
        log.close()


def report_dict(result: SolveResult, opts: FitOptions, seconds: float) -> dict[str, Any]:
    """A machine-readable summary of a run (`trainer fit --report`)."""
    return {
        "solver": opts.solver,
        "weights": opts.weights,
        "resumed_from": opts.snapshot,
        "iterations": result.iterations,
        "stopped_early": result.stopped_early,
        "stop_reason": result.stop_reason,
        "seconds": round(seconds, 3),
        "last_train_loss": result.last_loss,
        "test_scores": result.test_scores,
        "snapshots": [{"caffemodel": str(p.caffemodel), "solverstate": str(p.solverstate)}
                      for p in result.snapshots],
    }

