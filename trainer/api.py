"""The learning side as calls, for notebooks: ``trainer.fit``, ``trainer.test``, ``trainer.export``, ...

Each call is the ``trainer`` command of the same name, with the command's long options
as keyword arguments (``-`` written ``_``) and the same defaults; each returns the
command's result object. ``trainer.load_net`` (or ``trainer.net.Net``) gives a net to step by
hand. These names are the public API: kept stable.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["fit", "test", "export", "plot", "load_net", "transfer"]


def fit(solver: str | os.PathLike, *, weights: str | None = None, snapshot: str | None = None,
        device: str = "auto", gpu: int = 0, log: str | None = None, metrics: str | None = None,
        max_iter: int | None = None, tensorboard: str | None = None, quiet: bool = False,
        restart: bool = False, progress: bool | None = None) -> Any:
    """Train or fine-tune as a solver prototxt says (``trainer fit --solver S``).

    ``weights``: .caffemodel(s) to copy by layer name (comma-separated), or ``snapshot``: a
    .solverstate to resume; ``device``: auto / cpu / gpu; ``log`` / ``metrics``: default
    ``<snapshot_prefix>.log`` / ``.metrics.csv``; ``max_iter`` overrides the solver's;
    ``tensorboard``: a folder for TensorBoard scalars; ``quiet``: no log lines on stderr;
    ``restart``: start over where snapshots of the same prefix exist (without it, a second call in
    the same folder stops and names the latest snapshot); ``progress``: the test passes' bar
    (True always, False never, None on a terminal).
    Ctrl-C stops after a snapshot. Returns a SolveResult (``.iterations``, ``.snapshots``,
    ``.test_scores``, ``.train_losses``).
    """
    from trainer.fit import FitOptions
    from trainer.fit import fit as run
    opts = FitOptions(solver=str(solver), weights=weights, snapshot=snapshot, device=device, gpu=gpu, log=log,
                      metrics=metrics, max_iter=max_iter, tensorboard=tensorboard, restart=restart,
                      progress=progress, stream=io.StringIO() if quiet else sys.stderr)
    return run(opts)


def load_net(model: str | os.PathLike, weights: str | None = None, *, phase: str = "test",
             stage: Sequence[str] = (), level: int = 0, device: str = "cpu", gpu: int = 0) -> Any:
    """A trainer Net from a prototxt (V0/V1 upgraded), with ``weights`` (comma-separated) copied in.

    ``net.blob("data").data[...] = x; net.forward(); net.blob("prob").data`` runs it;
    close it (or use ``with``) to release its databases and threads. ``stage`` / ``level``: the
    net state for include / exclude rules (``--stage`` / ``--level``).
    """
    from datakit.formats import caffe_pb2
    from trainer import backend
    from trainer.net import Net
    from trainer.weights import load_weights_list
    phases = {"train": caffe_pb2.TRAIN, "test": caffe_pb2.TEST}
    net = Net.from_file(model, phases[phase.lower()], xp=backend.select(device, gpu), stages=list(stage),
                        level=level)
    if weights:
        load_weights_list(net, weights)
    return net


def test(model: str | os.PathLike, weights: str, *, iterations: int = 50, phase: str = "test",
         stage: Sequence[str] = (), level: int = 0, device: str = "auto", gpu: int = 0) -> Any:
    """Score a model over ``iterations`` batches of its data layers (``trainer test``; Caffe's ``caffe test``).

    Returns a ScoreResult (trainer.evaluate): ``.means`` (each net output averaged), ``.mean_loss``, ``.lines()`` as printed.
    """
    from trainer.evaluate import test_net
    with load_net(model, weights, phase=phase, stage=stage, level=level, device=device, gpu=gpu) as net:
        return test_net(net, iterations)


def export(model: str | os.PathLike, weights: str | os.PathLike | None, output: str | os.PathLike, *,
           format: str | None = None, mean: Any = None, mean_value: Sequence[float] | None = None,
           scale: float | None = None, opset: int = 17) -> Any:
    """Export a deploy net to ONNX, or its weights to safetensors (``trainer export``).

    ``format``: 'onnx' or 'safetensors' (default: from the output's extension);
    ``mean``: a mean file (.binaryproto / .npy, as ``--mean``), or a mean image array or
    per-channel values; ``mean_value``: per-channel values (``--mean-value``); folded in as
    ``(x - mean) * scale``. Returns the path written (safetensors: the file and its JSON sidecar).
    """
    from datakit.errors import ConfigError
    fmt = format or ("safetensors" if str(output).endswith(".safetensors") else "onnx")
    if mean is not None and mean_value is not None:
        raise ConfigError("give mean or mean_value, not both")
    if fmt == "safetensors":
        if mean is not None or mean_value is not None or scale is not None:
            raise ConfigError("mean / mean_value / scale fold preprocessing into an ONNX graph; "
                              "safetensors holds weights only")
        from trainer.export_safetensors import export_safetensors
        return export_safetensors(model, weights, output)
    import numpy as np

    from trainer.export_onnx import export_onnx
    if isinstance(mean, (str, os.PathLike)):
        from datakit.formats.blobproto import read_mean
        mean = read_mean(mean)
    elif mean_value is not None:
        mean = list(mean_value)
    return export_onnx(model, weights, output, mean=None if mean is None else np.asarray(mean, np.float32),
                       scale=scale, opset=opset)


def transfer(net: str | os.PathLike, layers: int, *, frozen: bool, output: str | os.PathLike | None = None,
             source: str | None = None, train_source: str | None = None, test_source: str | None = None,
             mean: str | None = None, num_output: int | None = None, keep_names: bool = False) -> Any:
    """A transferred net built from the base net prototxt ``net`` (``trainer transfer``).

    The first ``layers`` learnable layers keep their names, so ``--weights`` copies them:
    ``frozen=True`` gives them lr_mult 0 and decay_mult 0, ``frozen=False`` keeps the base's
    multipliers (fine-tuned). Learnable layers above are renamed ``<name>-new`` (fresh), unless
    ``keep_names`` (the paper's random-frozen control). ``source`` / ``train_source`` /
    ``test_source`` / ``mean`` / ``num_output`` retarget the data layers and the top layer.
    Returns the NetParameter, also written to ``output`` when given.
    """
    from datakit.formats.prototxt import read_net, write_prototxt
    from trainer.transfer import TransferSpec, check_sources, transfer_net

    spec = TransferSpec(layers=layers, frozen=frozen, source=source, train_source=train_source,
                        test_source=test_source, mean_file=mean, num_output=num_output, keep_names=keep_names)
    base = read_net(net)
    check_sources(base, spec)
    built = transfer_net(base, spec)
    if output is not None:
        write_prototxt(output, built)
    return built


def plot(logs: Sequence[str | os.PathLike], output: str | os.PathLike | None = "curves.png", *,
         tensorboard: str | os.PathLike | None = None, title: str | None = None) -> Any:
    """Curves from Caffe-format logs (ours or Caffe's, .gz ok) into a PNG and/or TensorBoard runs.

    Returns the parsed runs (``trainer.curves.Run``: ``.train`` / ``.test`` series).
    """
    from trainer.curves import parse_log, plot_runs
    runs = [run for log in logs for run in parse_log(log)]
    if tensorboard is not None:
        from trainer.tensorboard import runs_to_tensorboard
        runs_to_tensorboard(runs, tensorboard)
    if output is not None:
        plot_runs(runs, output, title=title)
    return runs
