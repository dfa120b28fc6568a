"""Caffe's Solver loop: iterations, averaged loss, display, testing, snapshots, resume, stop.

The arithmetic of one update lives in :mod:`trainer.updates` and the rates in
:mod:`trainer.lr_policy`; this module is the order of events of Caffe's
``Solver::Step``/``Solve``, so logs, snapshot iterations and test points fall
where a Caffe user expects them:

    for each iteration: clear diffs; test if iter % test_interval == 0 (iter 0 only with
    test_initialization); iter_size × forward/backward; display the loss averaged over
    average_loss iterations; update (logs the lr); iter += 1; snapshot every `snapshot`.

After ``max_iter`` a final snapshot (``snapshot_after_train``), a final loss line and,
as in Caffe, a final test when ``test_interval`` divides ``max_iter`` (or always when
``final_test`` is set: ``trainer fit --max-iter``, which the grid runner passes).
``request_stop()`` (SIGINT/SIGTERM in ``trainer fit``) ends the run at the end of the
current iteration with a snapshot, so no finished iteration is lost.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np

from datakit.errors import ConfigError

from trainer import lr_policy, rails
from trainer.backend import to_host
from trainer.caffelog import CaffeLog, fmt
from trainer.evaluate import OutputSums
from trainer.pass_progress import test_pass_progress
from trainer.snapshot import (LoadedState, SnapshotError, SnapshotPaths, read_solverstate, rng_state,
                              set_rng_state, write_snapshot)
from trainer.updates import make_rule


@dataclass
class SolveResult:
    iterations: int
    stopped_early: bool = False
    stop_reason: str = ""
    snapshots: list[SnapshotPaths] = field(default_factory=list)
    last_loss: float = float("nan")
    test_scores: list[dict[str, float]] = field(default_factory=list)   # the last test of each test net
    test_iteration: int | None = None                                    # the iteration of that test
    train_losses: list[tuple[int, float]] = field(default_factory=list)  # (iter, loss of that iteration)


class Solver:
    """Trains ``net`` with the SolverParameter ``param``; ``test_nets`` share its weights."""

    def __init__(self, param, net, test_nets: Sequence[Any] = (), *, log: CaffeLog | None = None,
                 snapshot_prefix: str | None = None, seed: int | None = None,
                 progress: bool | None = None) -> None:
        self.param = param
        self.progress = progress  # the test passes' bar: True always, False never, None on a terminal
        self.net = net
        self.test_nets = list(test_nets)
        self.log = log if log is not None else CaffeLog()
        self.xp = net.xp
        lr_policy.check_policy(param)
        if param.max_iter <= 0:
            raise ConfigError("solver: max_iter must be > 0")
        if len(param.test_iter) != len(self.test_nets):
            raise ConfigError(f"solver: {len(param.test_iter)} test_iter value(s) for {len(self.test_nets)} "
                              "test net(s); give one test_iter per test net")
        check_test_iter(param)
        if param.test_interval and not self.test_nets:  # Caffe trains on without a word
            self.log.warning("solver: test_interval is set but there is no test_iter, so no test net: training "
                             "runs without tests (give test_iter to test the net's TEST phase)")
        self.snapshot_prefix = snapshot_prefix or param.snapshot_prefix
        if param.snapshot and not self.snapshot_prefix:
            raise ConfigError("solver: snapshot is set but snapshot_prefix is empty")
        #: Caffe's snapshot_format: BINARYPROTO (.caffemodel/.solverstate) or HDF5 (.caffemodel.h5/.solverstate.h5)
        self.hdf5 = param.HasField("snapshot_format") and param.snapshot_format == param.HDF5
        for t in self.test_nets:
            t.share_trained_layers_with(net)
        self.rule = make_rule(param, net.learnable_params, self.xp)
        self.iter = 0
        self.seed = seed
        self.average_loss = max(1, int(param.average_loss))
        self.losses: collections.deque[float] = collections.deque(maxlen=self.average_loss)
        self.stop_reason = ""
        #: a stop signal that came again while stopping (ignored), and whether the user was told then
        self._repeat: tuple[str, bool] | None = None
        #: (iteration, scores of the test nets done) of a test pass a stop cut short after net #0
        self._partial_test: tuple[int, list[dict[str, float]]] | None = None
        self.restored_from: Path | None = None
        self.result = SolveResult(0)
        #: test after the last iteration even when max_iter is not a multiple of test_interval
        #: (``trainer fit --max-iter`` sets it: a shortened run should still report its accuracy)
        self.final_test = False
        self._flt_min_streak = 0
        self._weights = net.output_loss_weights()

    # -- control --------------------------------------------------------------------------------
    def request_stop(self, reason: str = "interrupted", *, said: bool = False) -> None:
        """Finish the current iteration, snapshot, and return (safe to call from a signal handler).

        A request while a stop is already under way keeps the first reason (the exit status
        follows it) and is only noted, for one log line once the snapshot is written; ``said``:
        the caller already told the user on stderr, so that line goes to the log file only.
        """
        if not self.stop_reason:
            self.stop_reason = reason
        elif self._repeat is None or (said and not self._repeat[1]):
            self._repeat = (reason, said)

    def rate(self) -> float:
        return lr_policy.rate_for(self.param, self.iter, getattr(self.net, "dtype", np.float32))

    # -- one iteration --------------------------------------------------------------------------
    def _display(self) -> bool:
        return bool(self.param.display) and self.iter % self.param.display == 0

    def step(self, iters: int) -> None:
        stop_iter = self.iter + iters
        started = time.perf_counter()
        start_iter = self.iter
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if (self.param.test_interval and self.iter % self.param.test_interval == 0
                    and (self.iter > 0 or self.param.test_initialization)):
                t_test = time.perf_counter()
                tested = self.test_all()
                started += time.perf_counter() - t_test  # the speed shown is training speed
                if tested is None:
                    break  # a stop cut the test short: the snapshot of this iteration repeats it on resume
            display = self._display()
            loss = 0.0
            for _ in range(max(1, self.param.iter_size)):
                one = self.net.forward()
                rails.check_loss(self.net, one, self.iter, self.param.base_lr)
                self.net.backward()
                loss += one
            loss /= max(1, self.param.iter_size)
            self._flt_min_streak = self._flt_min_streak + 1 if rails.near_flt_min_loss(loss) else 0
            rails.check_flt_min_streak(self._flt_min_streak, self.iter, self.param.base_lr)
            self.losses.append(loss)
            smoothed = sum(self.losses) / len(self.losses)
            self.result.train_losses.append((self.iter, loss))
            self.result.last_loss = loss
            if display:
                self.log.train_loss(self.iter, smoothed)
                outs = self.net.outputs()
                # Every element of every output, numbered on across them (Caffe's score_index): a vector
                # output (Accuracy's per-class top) prints one line per element under its name.
                self.log.train_outputs(self.iter, [(name, float(v), self._weights[name])
                                                   for name in self.net.output_names
                                                   for v in np.asarray(outs[name]).reshape(-1)])
                # Timed from the end of this run's first iteration: that one compiles the CPU kernels and
                # allocates every buffer (the demo's "Iteration 0, 0.20 iter/s, 0:16:57 left" for 12 s of work).
                done = self.iter - start_iter - 1
                if done > 0:
                    speed = done / max(time.perf_counter() - started, 1e-9)
                    left = (self.param.max_iter - self.iter - 1) / speed if speed > 0 else 0
                    self.log.info(f"Iteration {self.iter}, {speed:.2f} iter/s, {_hms(left)} left")
            rate = self.rate()
            if display:
                self.log.learning_rate(self.iter, rate)
            self.rule.apply(rate, self.iter)
            clipped = self.rule.clipped
            if clipped:  # Caffe's ClipGradients line, at every update it scales
                self.log.info(f"Gradient clipping: scaling down gradients (L2 norm {fmt(clipped[0])} > "
                              f"{fmt(self.param.clip_gradients)}) by scale factor {fmt(clipped[1])}")
            self.iter += 1
            if self.iter == start_iter + 1:
                started = time.perf_counter()  # the speed shown counts from here (see above)
            if self.param.snapshot and self.iter % self.param.snapshot == 0:
                self.snapshot()
            if self.stop_reason:
                break

    # -- testing --------------------------------------------------------------------------------
    def test_all(self) -> list[dict[str, float]] | None:
        """Test every test net; None when a stop cut the pass short (then nothing of it is recorded).

        With several test nets, those that finished before the stop keep their logged scores; the
        snapshot remembers them (``partial_test``), so the resumed run tests only the rest at that
        iteration and no score is recorded twice.
        """
        scores: list[dict[str, float]] = []
        if self._partial_test is not None and self._partial_test[0] == self.iter:
            scores = list(self._partial_test[1])
            done = "#0" if len(scores) == 1 else f"#0-#{len(scores) - 1}"
            self.log.info(f"Iteration {self.iter}: test net {done} was tested before the stop (its scores are in "
                          f"the log of that run); testing from #{len(scores)}")
        self._partial_test = None
        for i in range(len(scores), len(self.test_nets)):
            got = self.test(i)
            if got is None:
                if scores:
                    self._partial_test = (self.iter, scores)
                return None
            scores.append(got)
        self.result.test_scores = scores
        self.result.test_iteration = self.iter
        return scores

    def test(self, net_id: int) -> dict[str, float] | None:
        """One test pass of ``test_iter`` batches: the mean of each output, logged and returned.

        A stop (Ctrl-C) during the pass ends it at once, and its mean over the batches done is
        not a test score: nothing is logged or returned (None), the log says how far it got, and
        the test net's data position is wound back, so the snapshot's resumed run repeats this
        very test (its only recorded score at this iteration, equal to an uninterrupted run's).
        """
        net = self.test_nets[net_id]
        self.log.testing(self.iter, net_id)
        sums = OutputSums()
        weights = net.output_loss_weights()
        n_iter = int(self.param.test_iter[net_id])
        loss_total = 0.0
        before = _net_state(net)
        bar, ticker = test_pass_progress(self.log, self.progress, n_iter, net_id, self.iter)
        for done in range(1, n_iter + 1):
            loss_total += net.forward()
            sums.add({name: to_host(net.blobs[name].data) for name in net.output_names})
            bar.update(1)
            if ticker is not None:
                ticker.update(done)
            if self.stop_reason and done < n_iter:
                bar.close()
                _restore_net(net, before)
                self.log.warning(f"{self.stop_reason} received: the test at iteration {self.iter} (test net "
                                 f"#{net_id}) was interrupted after {done} of {n_iter} batches and is not "
                                 "recorded (a resumed run repeats it)")
                return None
        bar.close()
        if self.param.test_compute_loss:
            self.log.info(f"Test loss: {fmt(loss_total / max(n_iter, 1))}")
        means: dict[str, float] = {}
        lines = []
        averaged = sums.means()
        for name in net.output_names:
            mean = averaged[name]
            for j, v in enumerate(np.asarray(mean).reshape(-1)):
                key = name if np.asarray(mean).size == 1 else f"{name}[{j}]"
                means[key] = float(v)
                lines.append((name, float(v), weights[name]))
        self.log.test_outputs(self.iter, lines, net_id)
        return means

    # -- snapshots ------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        return {
            "iter": self.iter,
            "seed": self.seed,
            "losses": list(self.losses),
            "train": _net_state(self.net),
            "test": [_net_state(t) for t in self.test_nets],
            **({"partial_test": {"iter": self._partial_test[0], "scores": self._partial_test[1]}}
               if self._partial_test is not None else {}),
        }

    def snapshot(self) -> SnapshotPaths:
        diff = bool(self.param.snapshot_diff)
        try:
            paths = write_snapshot(self.snapshot_prefix, self.iter, self.net.to_proto(write_diff=diff),
                                   [to_host(h) for h in self.rule.history],
                                   lr_policy.current_step(self.param.lr_policy or "fixed", self.iter,
                                                          stepsize=self.param.stepsize,
                                                          stepvalues=list(self.param.stepvalue)),
                                   self._extra_state(), hdf5=self.hdf5, write_diff=diff)
        except SnapshotError as err:
            done = [p.solverstate for p in self.result.snapshots] or ([self.restored_from] if self.restored_from else [])
            hint = (f"; the latest complete snapshot is {done[-1]} (free space, then resume with --snapshot {done[-1]})"
                    if done else "")
            raise SnapshotError(f"{err} (snapshot of iteration {self.iter}){hint}") from None
        kind = "HDF5 file" if self.hdf5 else "binary proto file"
        self.log.info(f"Snapshotting to {kind} {paths.caffemodel}")
        self.log.info(f"Snapshotting solver state to {kind} {paths.solverstate}")
        self.result.snapshots.append(paths)
        return paths

    def restore(self, path: str | Path) -> LoadedState:
        """Resume from a .solverstate: weights, iteration, history, and (ours) RNG/data positions."""
        from trainer.weights import load_weights
        state = read_solverstate(path)
        if state.learned_net is not None:
            missing = load_weights(self.net, state.learned_net).initialised
            if missing:  # a renamed or new layer would go on from its filler with another layer's history
                raise ConfigError(f"{path}: its weights have no layer {', '.join(missing)} of this net; a resume "
                                  f"goes on with the net it saved: to fine-tune from it, start a new run with "
                                  f"--weights {state.learned_net}")
        if len(state.history) != len(self.rule.history):
            raise ConfigError(f"{path}: {len(state.history)} history blobs, but this solver ("
                              f"{type(self.rule).__name__}) keeps {len(self.rule.history)}; resume with "
                              "the same net and solver type")
        for k, (mine, saved) in enumerate(zip(self.rule.history, state.history)):
            if tuple(mine.shape) != tuple(saved.shape) and mine.size == saved.size:
                saved = saved.reshape(mine.shape)
            if tuple(mine.shape) != tuple(saved.shape):
                raise ConfigError(f"{path}: history blob {k} has shape {saved.shape}, the net's param has "
                                  f"{tuple(mine.shape)}; resume with the same net")
            mine[...] = self.xp.asarray(saved)
        self.iter = state.iter
        self.restored_from = Path(path)
        extra = state.extra
        if extra:
            self.losses.extend(float(x) for x in extra.get("losses", []))
            self.seed = extra.get("seed", self.seed)
            _restore_net(self.net, extra["train"])
            for t, st in zip(self.test_nets, extra.get("test", [])):
                _restore_net(t, st)
            partial = extra.get("partial_test")
            if partial:
                self._partial_test = (int(partial["iter"]), [dict(x) for x in partial["scores"]])
        if state.note:
            self.log.warning(state.note)
        self.log.info(f"Restored solver state from {path}: iteration {self.iter}"
                      + ("" if extra else " (a Caffe solverstate: data layers start from the first record)"))
        return state

    # -- the whole run --------------------------------------------------------------------------
    def solve(self) -> SolveResult:
        self.log.info("Solving " + (self.net.name or "net"))
        self.log.info(f"Learning Rate Policy: {self.param.lr_policy or 'fixed'}")
        self.step(self.param.max_iter - self.iter)
        res = self.result
        res.iterations = self.iter
        if self.stop_reason:
            return self._stopped()
        if self.param.snapshot_after_train and (not self.param.snapshot or self.iter % self.param.snapshot):
            self.snapshot()
        if self._display():
            # Caffe's Solve: one more forward, its loss taken into the average (UpdateSmoothedLoss) and the
            # average printed, as every display line is (the raw loss only equals it at average_loss 1).
            self.losses.append(float(self.net.forward()))
            self.log.train_loss(self.iter, sum(self.losses) / len(self.losses))
        if self.test_nets and ((self.param.test_interval and self.iter % self.param.test_interval == 0)
                               or self.final_test):
            if self.test_all() is None:  # a stop during the final test: resuming repeats it
                return self._stopped()
        self.log.info("Optimization Done.")
        return res

    def _stopped(self) -> SolveResult:
        """The end of a run a stop request cut short: a snapshot (unless this iteration has one) and how to resume."""
        res = self.result
        self.log.warning(f"{self.stop_reason} received: stopped after iteration {self.iter}, writing a snapshot")
        if not res.snapshots or res.snapshots[-1] != _paths_for(self):
            self.snapshot()
        self._log_repeat()
        res.stopped_early = True
        res.stop_reason = self.stop_reason
        self.log.info(f"Optimization stopped early ({self.stop_reason}) at iteration {self.iter}; "
                      f"resume with --snapshot {res.snapshots[-1].solverstate}")
        return res

    def _log_repeat(self) -> None:
        """Say in the log that a second stop signal came and was ignored, so the snapshot was written whole."""
        if self._repeat is None:
            return
        reason, said = self._repeat
        stream = self.log.stream
        if said:
            self.log.stream = None  # already said on stderr when it came
        try:
            self.log.warning(f"{reason} received again while stopping: ignored, so the snapshot was written "
                             "whole")
        finally:
            self.log.stream = stream


def _paths_for(solver: Solver) -> SnapshotPaths:
    from trainer.snapshot import snapshot_paths
    return snapshot_paths(solver.snapshot_prefix, solver.iter, hdf5=solver.hdf5)


def check_test_iter(param, where: str = "solver") -> None:
    """ConfigError unless every test_iter is > 0: a test pass of no batch has no mean to report.

    Caffe only CHECKs that there is one test_iter per test net; with 0 its Test() averages over
    nothing and logs no score at all, which is never what a solver file means.
    """
    for i, n in enumerate(param.test_iter):
        if n <= 0:
            raise ConfigError(f"{where}: test_iter is {n} for test net #{i}; give the number of test batches "
                              "per test (> 0; test_iter x the test net's batch_size images are tested)")


def _net_state(net) -> dict[str, Any]:
    """What resumes a net's randomness and data exactly: its RNG and each data layer's position."""
    states = ((layer.name, layer.get_state()) for layer in net.layers)
    return {"rng": rng_state(net.rng), "data": {name: state for name, state in states if state}}  # {}: stateless


def _restore_net(net, state: dict) -> None:
    set_rng_state(net.rng, state["rng"])
    data = state.get("data", {})
    for layer in net.layers:
        if layer.name in data:
            layer.set_state(data[layer.name])


def _hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
