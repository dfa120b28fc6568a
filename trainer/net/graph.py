"""A NetParameter wired into layers and blobs: Caffe's Net::Init, without running anything.

``NetGraph(param, phase, ...)`` filters the layers for the phase and inserts
Splits (``trainer.net.rules``), builds each layer and sets it up in order (so
shapes are inferred layer by layer), connects tops to bottoms by blob name
(in-place layers, top name == bottom name, share one Blob), registers the
learnable blobs (ParamSpec names share one blob across layers, with Caffe's
shape and lr_mult checks), and prunes the backward pass the way Caffe prunes it:
a layer runs backward only when it contributes to a loss and either has a
learnable param (lr_mult != 0) or something below it needs a gradient, so frozen
early layers cost nothing in backward. Every inconsistency is a FormatError
naming the layer (and the prototxt line when the net came from a file).

The parallel lists (``layers``, ``bottom_vecs``, ``top_vecs``, ``loss_weights``,
``layer_need_backward``, ...) are indexed by layer position; ``trainer.net.Net``
runs them, ``trainer.net.weight_copy`` moves weights in and out of them.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from collections.abc import Sequence

import numpy as np

from datakit.errors import FormatError, MissingFile
from datakit.formats import caffe_pb2
from datakit.formats.upgrade import upgrade_net

from trainer.layers import Blob, Layer, layer_class
from trainer.net.rules import TEST, default_loss_weights, filter_net, insert_splits


class UnknownNameError(FormatError, KeyError):
    """``Net.layer`` / ``Net.blob`` got a name the net does not have.

    A FormatError, so the CLI prints it as one line; still a KeyError, so callers that
    caught the KeyError these lookups used to raise keep working."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""   # not KeyError's repr() of the message


@dataclass
class Param:
    """One learnable blob as the solver sees it (shared blobs appear once)."""

    blob: Blob
    lr_mult: float
    decay_mult: float
    layer_name: str
    index: int
    name: str = ""

    @property
    def data(self) -> Any:
        return self.blob.data

    @property
    def diff(self) -> Any:
        return self.blob.diff

    @property
    def shape(self) -> tuple[int, ...]:
        return self.blob.shape


@dataclass(frozen=True)
class ParamSpecInfo:
    """Where a named (shared) param was first declared, to check the layers that share it."""

    layer: str
    lr_mult: float


class NetGraph:
    """The layers of one phase, on ``xp`` (numpy or cupy), wired by blob name; see the module docstring."""

    def __init__(self, param: caffe_pb2.NetParameter, phase: int = TEST, *, xp: ModuleType | None = None,
                 stages: Sequence[str] = (), level: int = 0, seed: int | None = None,
                 base_dir: str | Path = ".", dtype: Any = np.float32, source: str | os.PathLike | None = None) -> None:
        self.xp = xp if xp is not None else np
        # The prototxt the net was read from: errors then name its line, Python layers import beside it.
        self.source = str(source) if source is not None else None
        self.phase = phase
        self.name = param.name
        self.dtype = np.dtype(dtype)
        self.base_dir = str(base_dir)
        self.rng = np.random.default_rng(seed)
        if param.layers and not param.layer:
            raise FormatError(f"net {param.name!r} uses old-style 'layers'; read it with "
                              "datakit.formats.prototxt.read_net, which upgrades it")
        # As Caffe's Net(file, phase, level, stages): the file's own state
        # stages are kept and the given ones added; phase and level are set.
        state = caffe_pb2.NetState(phase=phase, level=level)
        state.stage.extend(param.state.stage)
        state.stage.extend(stages)
        if len(param.input) or len(param.input_dim) or len(param.input_shape):
            # net-level inputs become a leading Input layer, as read_net's upgrade makes them
            param = upgrade_net(param, source=f"net {param.name!r}")
        layer_params = filter_net(param, state)
        self._inserted_splits: set[str] = set()
        layer_params = insert_splits(layer_params, self._inserted_splits)

        self.blobs: dict[str, Blob] = {}
        self.layers: list[Layer] = []
        self.layer_names: list[str] = []
        self.bottom_vecs: list[list[Blob]] = []
        self.top_vecs: list[list[Blob]] = []
        self.bottom_names: list[list[str]] = []
        self.top_names: list[list[str]] = []
        self.loss_weights: list[list[float]] = []
        self.layer_need_backward: list[bool] = []
        self.bottom_need_backward: list[list[bool]] = []
        self.learnable_params: list[Param] = []
        self._param_owner: dict[str, tuple[Blob, ParamSpecInfo]] = {}
        self.inserted_split: list[bool] = []  # layer i is a Split insert_splits added (not saved)
        self.force_backward = bool(param.force_backward)

        blob_needs_grad: dict[str, bool] = {}
        available: dict[str, None] = {}
        for lp in layer_params:
            self._add_layer(lp, blob_needs_grad, available)
        self.output_names = list(available)
        self._blob_needs_grad = blob_needs_grad
        self._prune_backward()

    # -- construction ---------------------------------------------------------
    def _add_layer(self, lp: caffe_pb2.LayerParameter, blob_needs_grad: dict[str, bool],
                   available: dict[str, None]) -> None:
        name = lp.name or f"layer{len(self.layers)}"
        if name in self.layer_names:
            raise FormatError(f"layer {name}: two layers have this name; layer names must be unique")
        try:
            cls = layer_class(lp.type, name)
        except FormatError as err:
            from datakit.formats.prototxt import locate_layer  # noqa: PLC0415  (only on this error)
            line = locate_layer(self.source, name) if self.source else None
            where = f"{self.source}:{line}: " if line else (f"{self.source}: " if self.source else "")
            raise FormatError(f"{where}{err}") from None
        lp = copy.copy(lp)
        lp.phase = self.phase
        layer = cls(lp, self.phase, self.xp, dtype=self.dtype, rng=self.rng, base_dir=self.base_dir)
        layer.name = name
        layer.prototxt = self.source
        bottoms = [self.blobs[b] for b in lp.bottom]
        tops: list[Blob] = []
        for j, tname in enumerate(lp.top):
            if j < len(lp.bottom) and lp.bottom[j] == tname:
                tops.append(self.blobs[tname])  # in place
            elif tname in self.blobs:
                raise FormatError(f"layer {name}: top {tname!r} is already produced by another layer "
                                  "(only in-place layers, with the same bottom at the same position, may reuse a name)")
            else:
                blob = Blob(self.xp, (), self.dtype, name=tname)
                self.blobs[tname] = blob
                tops.append(blob)
        for b in lp.bottom:
            available.pop(b, None)
        for t in lp.top:
            available[t] = None

        try:
            layer.set_up(bottoms, tops)  # counts, setup, reshape (Caffe's Layer::SetUp)
        except MissingFile as err:
            raise self._not_found_here(err, name, lp.type) from None
        self._share_params(layer, lp)
        weights = default_loss_weights(lp, cls)

        # Which bottoms get gradients, and whether this layer needs backward at all.
        if lp.propagate_down and len(lp.propagate_down) != len(lp.bottom):
            raise FormatError(f"layer {name}: propagate_down needs one value per bottom "
                              f"({len(lp.bottom)}), got {len(lp.propagate_down)}")
        bottom_need = []
        for j, b in enumerate(lp.bottom):
            need = blob_needs_grad.get(b, False) and layer.allow_force_backward(j)
            if lp.propagate_down and not lp.propagate_down[j]:
                need = False
            bottom_need.append(need)
        param_need = [self._lr_mult(lp, k, layer) != 0 for k in range(len(layer.blobs))]
        need = (not layer.is_data) and (any(blob_needs_grad.get(b, False) for b in lp.bottom) or any(param_need))
        layer.param_propagate_down = param_need
        for t in lp.top:
            blob_needs_grad[t] = need

        self.layers.append(layer)
        self.layer_names.append(name)
        self.bottom_vecs.append(bottoms)
        self.top_vecs.append(tops)
        self.bottom_names.append(list(lp.bottom))
        self.top_names.append(list(lp.top))
        self.loss_weights.append(weights)
        self.layer_need_backward.append(need)
        self.bottom_need_backward.append(bottom_need)
        self.inserted_split.append(lp.type == "Split" and name in self._inserted_splits)

    def _not_found_here(self, err: MissingFile, name: str, type_name: str) -> MissingFile:
        """A file a layer names (source, mean_file, ...) is missing: say which net line and layer named it and
        which folder its relative path was read from, the usual cause being `trainer` run from another
        folder."""
        from datakit.formats.prototxt import locate_layer  # noqa: PLC0415  (only on this error)
        line = locate_layer(self.source, name) if self.source else None
        where = f"{self.source}:{line}: " if line else (f"{self.source}: " if self.source else "")
        folder = (f"the current directory, {Path.cwd()}" if Path(self.base_dir) == Path(".")
                  else str(Path(self.base_dir).resolve()))
        return type(err)(f"{where}layer {name} ({type_name}): {err} (relative paths in a net are read from {folder})")

    @staticmethod
    def _lr_mult(lp: caffe_pb2.LayerParameter, k: int, layer: Layer) -> float:
        if layer.fixed_params:
            return 0.0  # statistics (BatchNorm), never learned
        return float(lp.param[k].lr_mult) if k < len(lp.param) else 1.0

    def _share_params(self, layer: Layer, lp: caffe_pb2.LayerParameter) -> None:
        """Register the layer's learnable blobs; ParamSpec names share one blob across layers."""
        if len(lp.param) > len(layer.blobs):
            raise FormatError(f"layer {layer.name}: {len(lp.param)} param specs but the layer has "
                              f"{len(layer.blobs)} learnable blob(s)")
        for k, blob in enumerate(layer.blobs):
            spec = lp.param[k] if k < len(lp.param) else caffe_pb2.ParamSpec()
            pname = spec.name
            if pname and pname in self._param_owner:
                owner, info = self._param_owner[pname]
                strict = spec.share_mode != caffe_pb2.ParamSpec.PERMISSIVE
                if (strict and owner.shape != blob.shape) or owner.count != blob.count:
                    raise FormatError(f"layer {layer.name}: shared param {pname!r} has shape {blob.shape} "
                                      f"here but {owner.shape} in layer {info.layer}")
                if spec.HasField("lr_mult") and spec.lr_mult != info.lr_mult:
                    raise FormatError(f"layer {layer.name}: shared param {pname!r} has lr_mult "
                                      f"{spec.lr_mult} here but {info.lr_mult} in layer {info.layer}")
                layer.blobs[k] = owner
                continue
            fixed = layer.fixed_params
            p = Param(blob, 0.0 if fixed else float(spec.lr_mult), 0.0 if fixed else float(spec.decay_mult),
                      layer.name, k, pname)
            self.learnable_params.append(p)
            if pname:
                self._param_owner[pname] = (blob, ParamSpecInfo(layer.name, float(spec.lr_mult)))

    def _prune_backward(self) -> None:
        """Caffe's second pass (Net::Init): walk down from the losses.

        A layer keeps its backward only if one of its tops is a loss or feeds
        a layer that needs it; a layer whose every top is a blob no consumer
        wants a gradient for (``propagate_down: false``) skips backward too.
        """
        under_loss: set[str] = set()
        skip_backprop: set[str] = set()
        for i in range(len(self.layers) - 1, -1, -1):
            tops = self.top_names[i]
            contributes = any(w != 0 for w in self.loss_weights[i]) or any(t in under_loss for t in tops)
            skip_down = bool(tops) and all(t in skip_backprop for t in tops)
            if self.layer_need_backward[i] and skip_down:
                self.layer_need_backward[i] = False
                self.bottom_need_backward[i] = [False] * len(self.bottom_names[i])
            if not contributes:
                self.layer_need_backward[i] = False
            for j, b in enumerate(self.bottom_names[i]):
                if contributes:
                    under_loss.add(b)
                else:
                    self.bottom_need_backward[i][j] = False
                if not self.bottom_need_backward[i][j]:
                    skip_backprop.add(b)
        if self.force_backward:
            for i, layer in enumerate(self.layers):
                if layer.is_data:
                    continue
                self.layer_need_backward[i] = True
                pd = layer.param.propagate_down
                self.bottom_need_backward[i] = [
                    layer.allow_force_backward(j) and not (pd and not pd[j])
                    for j in range(len(self.bottom_names[i]))]
        for layer, need in zip(self.layers, self.layer_need_backward):
            layer.need_backward = need

    @property
    def has_loss(self) -> bool:
        return any(w != 0 for ws in self.loss_weights for w in ws)

    def enable_full_backward(self) -> None:
        """Run backward through every non-data layer even without a loss (what `caffe time` does).

        Bottoms coming straight from data layers still get no gradient, as in Caffe.
        """
        for i, layer in enumerate(self.layers):
            if layer.is_data:
                continue
            self.layer_need_backward[i] = True
            layer.need_backward = True
            self.bottom_need_backward[i] = [self._blob_needs_grad.get(b, False) and layer.allow_force_backward(j)
                                            for j, b in enumerate(self.bottom_names[i])]

    # -- access ---------------------------------------------------------------
    def layer(self, name: str) -> Layer:
        try:
            return self.layers[self.layer_names.index(name)]
        except ValueError:
            raise UnknownNameError(f"net {self.name!r} has no layer {name!r} "
                                   f"(its layers: {', '.join(self.layer_names)})") from None

    def blob(self, name: str) -> Blob:
        try:
            return self.blobs[name]
        except KeyError:
            raise UnknownNameError(f"net {self.name!r} has no blob {name!r}") from None

    def output_loss_weights(self) -> dict[str, float]:
        """Loss weight of each output blob, in ``output_names`` order (0 for accuracies), as
        Caffe's display and `caffe test` show them."""
        weights: dict[str, float] = {}
        for names, ws in zip(self.top_names, self.loss_weights):
            for name, w in zip(names, ws):
                weights[name] = float(w)
        return {name: weights.get(name, 0.0) for name in self.output_names}

    @property
    def input_names(self) -> list[str]:
        """Tops of Input layers: the blobs a caller fills before forward()."""
        return [t for layer, names in zip(self.layers, self.top_names) if layer.type == "Input" for t in names]
