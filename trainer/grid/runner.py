"""`trainer grid run`: train a grid's nets in dependency order, N at a time, resumable.

The unit of work is `run_net(folder)`: a module-level function of one net folder, picklable, that
trains that net by running its ``trainer fit`` command as a child process in the folder, resuming
from the newest ``.solverstate`` when an earlier run was interrupted. It returns a NetOutcome and
leaves everything on disk (trainer.grid.layout). A child process rather than an in-process fit:
a net that crashes or exhausts memory takes only itself down; the child is asked to stop
(SIGTERM, which makes `trainer fit` snapshot and exit) when the thread that started it dies, so
a runner killed even with SIGKILL leaves no orphan training on, and the next run resumes each net
from its last snapshot; and the same function runs unchanged on a Dask worker.

`run_grid` is the coordinator: it submits the nets whose base is done (a transfer net needs its
base's final snapshot) in grid order, at most `jobs` at once, through an Executor (local threads by
default: each unit only waits on its child process); a failed net is reported with the last lines
of its output and the nets that need it are skipped with that reason; done nets are never run
again.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from datakit.errors import ConfigError
from trainer.grid.layout import (LOG_FILE, OUT_FILE, RUNNING_FILE, STATE_FILE, NetSpec, fit_arguments, is_done,
                                 latest_solverstate, log_iteration, log_tail, pid_alive, read_grid, read_json, read_net_spec,
                                 write_json)

_REPO = Path(__file__).resolve().parents[2]
INTERRUPTED_CODES = (130, 143, 129, -signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP)  # 128 + N: trainer fit's stops


@dataclass
class NetOutcome:
    """What one run of one net came to."""

    net: str
    state: str                     # "done", "failed", "interrupted", "skipped"
    exit_code: int | None = None
    iteration: int = 0
    seconds: float = 0.0
    resumed_from: int | None = None
    already_done: bool = False
    reason: str | None = None
    tail: list[str] = field(default_factory=list)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the thread that started us dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def fit_command(spec: NetSpec, resume: Path | None) -> list[str]:
    """The net's command (with --max-iter, see layout.fit_arguments), as a child of this Python;
    --snapshot replaces --weights when resuming."""
    return [sys.executable, "-m", "cli.trainer_main", "fit", *fit_arguments(spec, resume), "--quiet"]


def run_net(folder: str) -> NetOutcome:
    """Train the net in `folder` to its final snapshot (or resume it); see the module docstring."""
    path = Path(folder)
    spec = read_net_spec(path)
    if is_done(path, spec):
        return NetOutcome(spec.name, "done", 0, spec.max_iter, already_done=True)
    started = time.monotonic()
    if spec.final_snapshot(path).is_file() and (latest := latest_solverstate(path)) and latest[0] >= spec.max_iter:
        # Trained to the end, but the runner died before writing state.json: done, not retrained.
        write_json(path / STATE_FILE, {"state": "done", "finished": _now(), "exit_code": 0})
        return NetOutcome(spec.name, "done", 0, spec.max_iter)
    if spec.weights and not (path / spec.weights).is_file():
        reason = f"its base's final snapshot {spec.weights} is missing"
        write_json(path / STATE_FILE, {"state": "failed", "reason": reason, "finished": _now()})
        return NetOutcome(spec.name, "failed", None, reason=reason)
    _wait_for_earlier_run(path)
    latest = latest_solverstate(path)
    resume = latest[1].relative_to(path) if latest else None
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_REPO) + os.pathsep + env.get("PYTHONPATH", "")
    with open(path / OUT_FILE, "ab") as out:
        out.write(f"--- {_now()} {' '.join(fit_command(spec, resume)[3:])}\n".encode())
        out.flush()
        child = subprocess.Popen(fit_command(spec, resume), cwd=path, stdout=out, stderr=subprocess.STDOUT, env=env,
                                 stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        began = _now()
        write_json(path / RUNNING_FILE, {"pid": child.pid, "started": began, "host": os.uname().nodename})
        try:
            code = child.wait()
        except BaseException:
            child.terminate()
            code = child.wait()
            raise
        finally:
            (path / RUNNING_FILE).unlink(missing_ok=True)
    newest = latest_solverstate(path)
    outcome = NetOutcome(spec.name, "done", code, max(log_iteration(path), newest[0] if newest else 0),
                         time.monotonic() - started, resumed_from=latest[0] if latest else None)
    if code == 0 and spec.final_snapshot(path).is_file():
        write_json(path / STATE_FILE, {"state": "done", "started": began, "finished": _now(), "exit_code": 0,
                                       "seconds": round(outcome.seconds, 1)})
        return outcome
    outcome.tail = log_tail(path / OUT_FILE, 6)
    if code in INTERRUPTED_CODES:
        outcome.state, outcome.reason = "interrupted", f"stopped at iteration {outcome.iteration} (exit {code})"
    else:
        outcome.state = "failed"
        outcome.reason = (outcome.tail[-1] if outcome.tail else f"trainer fit exited {code}")
        if code == 0:
            outcome.reason = f"trainer fit ended without the final snapshot {spec.final_snapshot(path).name}"
    write_json(path / STATE_FILE, {"state": outcome.state, "reason": outcome.reason, "exit_code": code,
                                   "started": began, "finished": _now(), "tail": outcome.tail})
    return outcome


def _wait_for_earlier_run(path: Path) -> None:
    """A training process of an earlier runner still alive on this host (it is snapshotting after its
    runner died): wait for it to exit, so that two processes never train one net."""
    running = read_json(path / RUNNING_FILE)
    if not running or running.get("host") != os.uname().nodename:
        return
    while pid_alive(int(running.get("pid", 0)) or -1):
        time.sleep(0.5)


@dataclass
class GridRun:
    """What `run_grid` did: every net's outcome in the order they finished."""

    outcomes: list[NetOutcome] = field(default_factory=list)
    interrupted: bool = False

    def count(self, state: str) -> int:
        return sum(o.state == state for o in self.outcomes)


class _StatusLine:
    """A live one-line status on a terminal (redrawn every second), one line per event elsewhere."""

    def __init__(self, root: Path, total: int, stream: IO[str] | None) -> None:
        self.root, self.total, self.stream = root, total, stream
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.done = self.failed = self.skipped = 0
        self.running: dict[str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True) if self.tty else None
        if self._thread:
            self._thread.start()

    def _line(self) -> str:
        running = ", ".join(f"{name} {log_iteration(self.root / name)}/{max_iter}"
                            for name, max_iter in self.running.items())
        waiting = self.total - self.done - self.failed - self.skipped - len(self.running)
        return (f"grid: {self.done}/{self.total} done, {len(self.running)} running"
                + (f" ({running})" if running else "") + f", {waiting} waiting, {self.failed} failed, "
                f"{self.skipped} skipped")

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            self._draw()

    def _draw(self) -> None:
        with self._lock:
            if self.stream is not None and self.tty:
                self.stream.write("\r\x1b[K" + self._line()[:200])
                self.stream.flush()

    def event(self, text: str) -> None:
        with self._lock:
            if self.stream is None:
                return
            self.stream.write(("\r\x1b[K" if self.tty else "") + text + "\n")
            self.stream.flush()
        self._draw()

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self.stream is not None:
            self.event(self._line())


def run_grid(grid_dir: str | os.PathLike, jobs: int = 1, executor=None,
             stream: IO[str] | None = sys.stderr) -> GridRun:
    """Run every net not yet done, in dependency order; see the module docstring."""
    from datakit.parallel import LocalExecutor

    if executor is None and jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    root = Path(grid_dir)
    _, specs = read_grid(root)
    by_name = {s.name: s for s in specs}
    state = {s.name: ("done" if is_done(root / s.name, s) else "todo") for s in specs}
    result = GridRun()
    status = _StatusLine(root, len(specs), stream)
    status.done = sum(v == "done" for v in state.values())
    own = executor is None
    executor = executor or LocalExecutor(max(1, jobs), kind="threads")
    running: dict[object, str] = {}
    try:
        while True:
            for spec in specs:  # the nets whose base failed or was skipped cannot run
                if state[spec.name] == "todo" and spec.needs and state.get(spec.needs) in ("failed", "skipped"):
                    reason = f"needs {spec.needs}, which {state[spec.needs]}"
                    state[spec.name] = "skipped"
                    write_json(root / spec.name / STATE_FILE, {"state": "skipped", "reason": reason, "finished": _now()})
                    result.outcomes.append(NetOutcome(spec.name, "skipped", reason=reason))
                    status.skipped += 1
                    status.event(f"{spec.name}: skipped ({reason})")
            ready = [s for s in specs if state[s.name] == "todo" and (not s.needs or state.get(s.needs) == "done")]
            if result.interrupted:  # a net was stopped from outside: let the others finish, start no more
                ready = []
            for spec in ready[:max(0, executor.workers - len(running))]:
                state[spec.name] = "running"
                # absolute: a Dask worker started in another folder would look for a relative grid there
                running[executor.submit(run_net, os.path.abspath(root / spec.name))] = spec.name
                status.running[spec.name] = spec.max_iter
                status.event(f"{spec.name}: started" + (f" (copies layers 1..{spec.n} of {spec.needs})" if spec.needs else ""))
            if not running:
                break
            future = next(iter(executor.as_completed(list(running))))
            name = running.pop(future)
            status.running.pop(name, None)
            try:
                outcome = future.result()
            except Exception as err:  # the unit itself broke (not the training): a failure of that net
                outcome = NetOutcome(name, "failed", reason=f"{type(err).__name__}: {err}")
            result.outcomes.append(outcome)
            _report(outcome, by_name[name], status)
            state[name] = outcome.state
            if outcome.state == "interrupted":
                result.interrupted = True
    except KeyboardInterrupt:
        result.interrupted = True
        executor.cancel(list(running))
        here = os.uname().nodename
        for name in running.values():  # a terminal's Ctrl-C reached them too; a `kill -INT` of the runner did not
            doc = read_json(root / name / RUNNING_FILE)
            if not doc or not doc.get("pid"):
                continue
            if doc.get("host", here) != here:   # its pid is another machine's: here it is some other process
                status.event(f"{name}: running on {doc['host']}, where it finishes (Dask cannot stop a running task)")
            elif pid_alive(int(doc["pid"])):
                os.kill(int(doc["pid"]), signal.SIGTERM)  # trainer fit snapshots, then exits
        status.event("grid: interrupted; the running nets snapshot and stop; `trainer grid run` resumes them")
        raise
    finally:
        if own:
            executor.close()
        status.close()
    return result


def _report(outcome: NetOutcome, spec: NetSpec, status: _StatusLine) -> None:
    if outcome.state == "done":
        status.done += 1
        how = f" (resumed from iteration {outcome.resumed_from})" if outcome.resumed_from else ""
        status.event(f"{outcome.net}: done at iteration {spec.max_iter} in {outcome.seconds:.1f} s{how}")
    elif outcome.state == "failed":
        status.failed += 1
        tail = "".join(f"\n    {line}" for line in outcome.tail)
        status.event(f"{outcome.net}: FAILED: {outcome.reason}; see {Path(spec.name) / OUT_FILE} and "
                     f"{Path(spec.name) / LOG_FILE}{tail}")
    else:
        status.event(f"{outcome.net}: {outcome.state}: {outcome.reason}")
