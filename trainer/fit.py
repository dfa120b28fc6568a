"""`trainer fit`: Caffe's ``caffe train`` put together from the solver, nets, weights and data.

Reads the solver prototxt; builds the TRAIN net and the TEST nets it names (paths
inside the solver and nets resolve against the current directory, as in Caffe);
copies ``--weights`` by layer name and logs what was copied, freshly initialised
or ignored; or resumes ``--snapshot X.solverstate``; installs the safety rails;
trains; turns SIGINT/SIGTERM/SIGHUP into "snapshot, then exit" (:mod:`trainer.stop_signals`).

Finished work is never overwritten silently: where snapshots of the same
``snapshot_prefix`` exist, a run that neither resumes (``--snapshot``) nor says
``--restart`` stops before writing anything, naming the latest solverstate. Each run
starts with a header line in the log (:meth:`CaffeLog.run_header`).
"""

from __future__ import annotations

import random
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from datakit.errors import ConfigError, DatakitError, FormatError
from datakit.model_zoo import fetch_hint
from datakit.outputlock import OutputLock
from datakit.formats import caffe_pb2
from datakit.formats.prototxt import read_net, read_solver
from datakit.formats.upgrade import upgrade_net

from trainer import backend, rails
from trainer.caffelog import CaffeLog
from trainer.snapshot import Snapshots, find_snapshots
from trainer.stop_signals import install_stop_handlers
from trainer.solver import SolveResult, Solver, check_test_iter

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
    restart: bool = False   # start over where snapshots of the same prefix exist (they are overwritten)
    tensorboard: str | None = None   # a folder: every logged number also goes there as a TensorBoard scalar
    progress: bool | None = None     # the test passes' bar: True always, False never, None on a terminal
    #: after a stop by signal, leave the stop signals ignored instead of putting the old handlers back
    #: (the CLI: its summary and exit status must survive a user still pressing Ctrl-C)
    ignore_signals_after_stop: bool = False


def _locate(path: str, solver_dir: Path | None, field: str = "net", solver: str | None = None) -> str:
    """A net path from the solver: relative to the current directory as in Caffe; when nothing is
    there, beside the solver file (so shipped models/*/solver.prototxt run from any directory).

    A net found in neither place is a ConfigError naming the solver's field and both places."""
    if Path(path).exists():
        return path
    beside = solver_dir / path if solver_dir is not None and not Path(path).is_absolute() else None
    if beside is not None and beside.exists():
        return str(beside)
    if beside is None:
        where = f"looked for {path}"
    else:
        where = f"looked in the current directory ({Path.cwd() / path}) and beside the solver ({beside})"
    src = f"{solver}: " if solver else ""
    raise ConfigError(f"{src}the net file {path!r} named by the solver's {field}: field was not found: "
                      f"{where}; run from the folder the solver's paths are relative to, or fix {field}:")


def _net_from(param: caffe_pb2.SolverParameter, which: str, solver_dir: Path | None = None,
              solver: str | None = None) -> list[tuple[str, caffe_pb2.NetParameter]]:
    """(source name, NetParameter) for the train net ('train') or the test nets ('test')."""
    def read(path: str, field: str = "net") -> caffe_pb2.NetParameter:
        return read_net(_locate(path, solver_dir, field, solver))
    if which == "train":
        found = []
        if param.HasField("train_net_param"):
            found.append(("train_net_param", upgrade_net(param.train_net_param, source="train_net_param")))
        if param.train_net:
            found.append((param.train_net, read(param.train_net, "train_net")))
        if param.HasField("net_param"):
            found.append(("net_param", upgrade_net(param.net_param, source="net_param")))
        if param.net:
            found.append((param.net, read(param.net)))
        if len(found) != 1:
            raise ConfigError(f"{solver or 'solver'}: give exactly one of net, net_param, train_net, "
                              f"train_net_param (found {len(found)})")
        return found
    nets = [("test_net_param", upgrade_net(p, source="test_net_param")) for p in param.test_net_param]
    nets += [(f, read(f, "test_net")) for f in param.test_net]
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


def _source_file(src: str, solver_dir: Path, solver: str) -> str:
    """The file a net's layers are written in: its own prototxt, or the solver for an inline net_param."""
    if src in ("net_param", "train_net_param", "test_net_param"):
        return solver
    located = _locate(src, solver_dir)
    return located if Path(located).is_file() else solver


def default_prefix(solver_path: str, param: caffe_pb2.SolverParameter) -> str:
    """The snapshot prefix as Caffe 1.0 sets it when it reads a solver file: ``snapshot_prefix``; none
    given, the solver's path without its extension; a prefix that is an existing folder, that folder and
    the solver file's stem (``snapshots/`` -> ``snapshots/solver_iter_N``; Caffe before 1.0 wrote
    ``snapshots/_iter_N`` there, and a run resumed from such snapshots names them with --snapshot)."""
    p = Path(solver_path)
    if not param.snapshot_prefix:
        return str(p.with_suffix(""))
    if Path(param.snapshot_prefix).is_dir():
        return str(Path(param.snapshot_prefix) / p.stem)
    return param.snapshot_prefix


def check_earlier_run(prefix: str, opts: FitOptions) -> Snapshots:
    """Refuse to start over silently where an earlier run of ``prefix`` left snapshots."""
    found = find_snapshots(prefix)
    if opts.snapshot or opts.restart:
        return found
    if found.latest is not None:
        it = found.complete[-1][0]
        raise ConfigError(f"{prefix}: an earlier run left snapshots here (the latest is {found.latest}, "
                          f"iteration {it}); resume it with --snapshot {found.latest}, or start over with "
                          "--restart (its snapshots are then overwritten as the new run reaches them)")
    if found.incomplete:
        raise ConfigError(f"{prefix}: an earlier run left {found.incomplete[-1]} (an incomplete snapshot, "
                          "no .solverstate beside it to resume from); start over with --restart")
    return found


def _how(opts: FitOptions, prefix: str, earlier: Snapshots) -> str:
    """The header line's account of this run (which `trainer plot` reads back)."""
    if opts.snapshot:
        return f"resuming from {opts.snapshot}"
    how = f"fine-tuning from {opts.weights}" if opts.weights else "from scratch"
    if opts.restart and (earlier.latest or earlier.incomplete):
        n = len(earlier.complete)
        how += (f" (--restart over {n} earlier snapshot(s) of {prefix}, latest {earlier.latest}: overwritten "
                "as this run reaches their iterations)" if n else f" (--restart over leftovers of {prefix})")
    return how


def close_nets(nets: list[Any]) -> None:
    """Stop the data layers' prefetch threads and release their databases."""
    for net in nets:
        net.close()


def build(opts: FitOptions) -> tuple[Solver, CaffeLog, Any]:
    """Everything ``fit`` needs, ready to ``solve()`` (separate so tests and the API can step)."""
    if opts.weights and opts.snapshot:
        raise ConfigError("give --weights or --snapshot, not both (a snapshot already holds its weights)")
    param = read_solver(opts.solver)
    if opts.max_iter is not None:
        param.max_iter = int(opts.max_iter)
    check_test_iter(param, opts.solver)  # before the log or any net: a config error writes nothing
    prefix = default_prefix(opts.solver, param)
    earlier = check_earlier_run(prefix, opts)
    for field, path in ([("net", param.net)] if param.net else []) + (
            [("train_net", param.train_net)] if param.train_net else []) + [("test_net", p) for p in param.test_net]:
        _locate(path, Path(opts.solver).parent, field, opts.solver)  # a missing net stops before the log opens
    for weights in (opts.weights or "").split(","):  # as does missing --weights (not after building the nets)
        if weights and not Path(weights).exists():
            raise FormatError(f"--weights {weights}: file not found{fetch_hint(weights)}")
    log = CaffeLog(opts.log or f"{prefix}.log", metrics_path=opts.metrics or f"{prefix}.metrics.csv",
                   stream=opts.stream)
    log.run_header(_how(opts, prefix, earlier))
    if log.renamed_metrics is not None:
        log.info(f"The metrics CSV had no run column: kept as {log.renamed_metrics}")
    nets: list[Any] = []
    try:
        device = opts.device
        if device == "auto" and param.HasField("solver_mode") and param.solver_mode == param.CPU:
            device = "cpu"  # as Caffe: solver_mode CPU is obeyed unless --device says otherwise
        xp = backend.select(device, opts.gpu)
        seed = int(param.random_seed) if param.random_seed >= 0 else random.SystemRandom().randrange(2**31)
        log.info(f"Using {backend.device_name(xp)}; random_seed {seed}"
                 + ("" if param.random_seed >= 0 else " (drawn: set random_seed in the solver to repeat this run)"))
        solver, log, xp = _build(opts, param, prefix, log, xp, seed, nets)
        if opts.snapshot and earlier.complete and earlier.complete[-1][0] > solver.iter:
            log.warning(f"resuming at iteration {solver.iter} while snapshots up to iteration "
                        f"{earlier.complete[-1][0]} exist ({earlier.latest}): those after it are overwritten "
                        "as this run reaches them")
        return solver, log, xp
    except BaseException as err:
        if isinstance(err, DatakitError):  # in the log too (E, as a failure in training is), so that
            log.stream = None              # the board shows the run as failed, with why, not "running"
            log.line(str(err), severity="E")
        close_nets(nets)
        log.close()
        raise


def _build(opts: FitOptions, param, prefix: str, log: CaffeLog, xp, seed: int,
           nets: list[Any]) -> tuple[Solver, CaffeLog, Any]:
    from trainer.net import Net  # the core; imported late so `trainer plot` never needs it
    solver_dir = Path(opts.solver).parent
    [(train_src, train_param)] = _net_from(param, "train", solver_dir, opts.solver)
    state = caffe_pb2.NetState()
    state.CopyFrom(param.train_state)
    log.info(f"Creating training net from {train_src}")
    train_net = Net(train_param, TRAIN, xp=xp, stages=list(state.stage), level=state.level, seed=seed,
                    source=_source_file(train_src, solver_dir, opts.solver))
    nets.append(train_net)
    test_nets = []
    for i, (src, net_param) in enumerate(_net_from(param, "test", solver_dir, opts.solver)):
        ts = param.test_state[i] if i < len(param.test_state) else caffe_pb2.NetState()
        log.info(f"Creating test net (#{i}) specified by {src}")
        test_nets.append(Net(net_param, TEST, xp=xp, stages=list(ts.stage), level=ts.level, seed=seed + 1 + i,
                             source=_source_file(src, solver_dir, opts.solver)))
        nets.append(test_nets[-1])
    for net in [train_net, *test_nets]:
        rails.install(net, warn=log.warning)
    for i, (net, n_iter) in enumerate(zip(test_nets, param.test_iter)):
        for warning in rails.test_pass_overruns(net, int(n_iter), "test_iter", f"test net #{i}: ", passes=True):
            log.warning(warning)
    solver = Solver(param, train_net, test_nets, log=log, snapshot_prefix=prefix, seed=seed,
                    progress=opts.progress)
    solver.final_test = opts.max_iter is not None
    if opts.weights:
        from trainer.weights import iter_load_weights
        for path, report in iter_load_weights(train_net, opts.weights):
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


def _prefix_lock(opts: FitOptions) -> OutputLock:
    """The lock of the run's snapshot prefix: two runs into one prefix interleaved one log and overwrote
    each other's snapshots. Held from before ``build`` (which reads the earlier snapshots) to the end."""
    prefix = default_prefix(opts.solver, read_solver(opts.solver))
    return OutputLock(prefix, busy="another trainer fit{who} is writing this snapshot prefix (its snapshots "
                                   "and log); wait for it to finish, or give this run another snapshot_prefix")


def fit(opts: FitOptions) -> SolveResult:
    """Train as the solver says; returns what happened (snapshots, last test scores)."""
    lock = _prefix_lock(opts)
    lock.acquire()
    try:
        return _fit_locked(opts)
    finally:
        lock.release()


def _fit_locked(opts: FitOptions) -> SolveResult:
    solver, log, _ = build(opts)
    board = None
    if opts.tensorboard:
        from trainer.tensorboard import ScalarWriter, drop_steps_from
        if opts.snapshot and solver.iter > 0:   # resumed: iterations >= solver.iter are logged again
            dropped = drop_steps_from(opts.tensorboard, solver.iter)
            if dropped:
                log.info(f"Removed {dropped} TensorBoard scalars of iteration {solver.iter} and later from "
                         f"{opts.tensorboard}: this run writes them again")
        board = ScalarWriter(opts.tensorboard)
        log.sinks.append(board.metric)
        log.info(f"Writing TensorBoard scalars to {opts.tensorboard}")
    previous = install_stop_handlers(solver, opts) if opts.handle_signals else {}
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
        close_nets([solver.net, *solver.test_nets])
        log.close()
        if board is not None:
            board.close()
        for sig, handler in previous.items():  # last: a repeated Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN if opts.ignore_signals_after_stop and solver.stop_reason else handler)


def summary_lines(result: SolveResult) -> list[str]:
    """What `trainer fit` prints when done: the iteration reached, the last weights file and the
    last test scores with the iteration of that test; and, after a stop, how to resume."""
    last = result.snapshots[-1].caffemodel if result.snapshots else None
    at = f" at iteration {result.test_iteration}" if result.test_iteration is not None else ""
    scores = "; ".join(f"test net #{i}{at}: " + ", ".join(f"{k} = {v:.4g}" for k, v in s.items())
                       for i, s in enumerate(result.test_scores))
    lines = [f"trained to iteration {result.iterations}" + (f"; weights {last}" if last else "")
             + (f"; {scores}" if scores else "")]
    if result.stopped_early:
        lines.append(f"stopped early ({result.stop_reason}); resume with --snapshot "
                     f"{result.snapshots[-1].solverstate}")
    return lines


def exit_status(result: SolveResult) -> int:
    """0 for a finished run; after a stop by signal, 128 + the signal number (130 SIGINT, 143 SIGTERM,
    129 SIGHUP), as a shell reports a process that signal ended; 143 for a stop of another reason."""
    if not result.stopped_early:
        return 0
    sig = getattr(signal.Signals, result.stop_reason, None) if result.stop_reason.startswith("SIG") else None
    return 128 + int(sig) if sig is not None else 143


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
        "test_iteration": result.test_iteration,
        "snapshots": [{"caffemodel": str(p.caffemodel), "solverstate": str(p.solverstate)}
                      for p in result.snapshots],
    }

