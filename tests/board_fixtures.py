"""Folders for the board's tests: runs written with the trainer's own log writer, databases, models."""

from __future__ import annotations

from pathlib import Path

from trainer.caffelog import CaffeLog


def write_iterations(log: CaffeLog, start: int, stop: int, *, step: int = 10, test_every: int = 50) -> None:
    """Caffe's solver lines for iterations start..stop (loss, lr, a test pass every `test_every`)."""
    for it in range(start, stop, step):
        log.train_loss(it, 2.3 / (1 + it / 100))
        log.learning_rate(it, 0.01 * 0.9 ** (it // 100))
        if it % test_every == 0:
            log.testing(it, 0)
            log.test_outputs(it, [("accuracy", min(0.95, 0.1 + it / 500), 0.0), ("loss", 2.0 / (1 + it / 80), 1.0)])


def start_run(folder: Path, name: str = "train.log", iterations: int = 100) -> CaffeLog:
    """A log as `trainer fit` starts it, with `iterations` iterations written; the log stays open."""
    folder.mkdir(parents=True, exist_ok=True)
    log = CaffeLog(folder / name, stream=None)
    log.info("Solving LeNet")
    log.info("Learning Rate Policy: step")
    write_iterations(log, 0, iterations)
    return log


def loss_points(iterations: int, step: int = 10) -> int:
    return len(range(0, iterations, step))
