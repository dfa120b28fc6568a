"""A Net built from a Caffe NetParameter: layers, named blobs, params, forward/backward.

Follows Caffe's Net::Init: layers are filtered by the phase/level/stage rules,
Split layers are inserted where a blob feeds several layers (so their
gradients add up), shapes are inferred layer by layer at setup, and the
backward pass is pruned the way Caffe prunes it: a layer runs backward only
when it contributes to a loss and either has a learnable param (lr_mult != 0)
or something below it needs a gradient. Frozen early layers so cost nothing
in backward. In-place layers (top name == bottom name) share one Blob.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from collections.abc import Sequence

import numpy as np

from datakit.errors import FormatError
from datakit.formats import caffe_pb2
from datakit.formats.blobproto import array_to_blob, blob_shape, blob_to_array
from datakit.formats.upgrade import upgrade_net

from trainer.backend import to_host
from trainer.layers import Blob, Layer, layer_class

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


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


@dataclass
class CopyReport:
    """What ``Net.copy_from`` did, by layer name."""

    copied: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"copied {len(self.copied)} layer(s)"]
        if self.initialised:
            parts.append(f"initialised by fillers: {', '.join(self.initialised)}")
        if self.ignored:
            parts.append(f"not in the net (ignored): {', '.join(self.ignored)}")
        return "; ".join(parts)


# ------------------------------------------------------------- filtering ----


def state_meets_rule(state: caffe_pb2.NetState, rule: caffe_pb2.NetStateRule) -> bool:
    """Caffe's Net::StateMeetsRule."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_net(param: caffe_pb2.NetParameter, state: caffe_pb2.NetState) -> list[caffe_pb2.LayerParameter]:
    """The layers that belong to ``state`` (include: any rule met; exclude: none met)."""
    kept = []
    for lp in param.layer:
        if lp.include and lp.exclude:
            raise FormatError(f"layer {lp.name}: give include or exclude rules, not both")
        if lp.include:
            ok = any(state_meets_rule(state, r) for r in lp.include)
        else:
            ok = not any(state_meets_rule(state, r) for r in lp.exclude)
        if ok:
            kept.append(lp)
    return kept


def _default_loss_weights(lp: caffe_pb2.LayerParameter, cls: type[Layer]) -> list[float]:
    n = len(lp.top)
    if lp.loss_weight:
        if len(lp.loss_weight) != n:
            raise FormatError(f"layer {lp.name}: {len(lp.loss_weight)} loss_weight values for {n} tops")
        return [float(w) for w in lp.loss_weight]
    return [1.0 if (cls.is_loss and i == 0) else 0.0 for i in range(n)]


def insert_splits(layers: list[caffe_pb2.LayerParameter],
                  inserted: set[str] | None = None) -> list[caffe_pb2.LayerParameter]:
    """Caffe's InsertSplits: a Split layer after every top that feeds more than one bottom.

    The names of the Split layers added are put in ``inserted`` when given.
    """
    last_top: dict[str, tuple[int, int]] = {}
    source_of: dict[tuple[int, int], tuple[int, int]] = {}
    consumers: dict[tuple[int, int], int] = {}
    for i, lp in enumerate(layers):
        for j, name in enumerate(lp.bottom):
            if name not in last_top:
                raise FormatError(f"layer {lp.name}: bottom blob {name!r} is not produced by any layer "
                                  "above it (check the names and the include/exclude phase rules)")
            src = last_top[name]
            source_of[(i, j)] = src
            consumers[src] = consumers.get(src, 0) + 1
        for j, name in enumerate(lp.top):
            last_top[name] = (i, j)
    if all(c <= 1 for c in consumers.values()):
        return list(layers)
    out: list[caffe_pb2.LayerParameter] = []
    used: dict[tuple[int, int], int] = {}
    for i, lp in enumerate(layers):
        new = copy.deepcopy(lp)
        for j, name in enumerate(lp.bottom):
            src = source_of[(i, j)]
            if consumers.get(src, 0) > 1:
                k = used.get(src, 0)
                used[src] = k + 1
                new.bottom[j] = _split_blob_name(name, layers[src[0]].name, src[1], k)
        out.append(new)
        for j, name in enumerate(lp.top):
            count = consumers.get((i, j), 0)
            if count > 1:
                split = caffe_pb2.LayerParameter(name=f"{name}_{lp.name}_{j}_split", type="Split")
                split.bottom.append(name)
                split.top.extend(_split_blob_name(name, lp.name, j, k) for k in range(count))
                out.append(split)
                if inserted is not None:
                    inserted.add(split.name)
    return out


def _split_blob_name(blob: str, layer: str, top_index: int, k: int) -> str:
    return f"{blob}_{layer}_{top_index}_split_{k}"


# ------------------------------------------------------------------- net ----


class Net:
    """A Caffe network for one phase, on ``xp`` (numpy or cupy)."""

    def __init__(self, param: caffe_pb2.NetParameter, phase: int = TEST, *, xp: ModuleType | None = None,
                 stages: Sequence[str] = (), level: int = 0, seed: int | None = None,
                 base_dir: str | Path = ".", dtype: Any = np.float32, source: str | Path | None = None) -> None:
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
        self._auto_split: list[bool] = []
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
        layer.source = self.source
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

        layer.set_up(bottoms, tops)  # counts, setup, reshape (Caffe's Layer::SetUp)
        self._share_params(layer, lp)
        weights = _default_loss_weights(lp, cls)

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
        self._auto_split.append(lp.type == "Split" and name in self._inserted_splits)

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

    def close(self) -> None:
        """Close every layer's files and threads (data layers); the net is unusable afterwards."""
        for layer in self.layers:
            layer.close()

    def __enter__(self) -> Net:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

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

    @classmethod
    def from_file(cls, path: str | Path, phase: int = TEST, **kwargs: Any) -> Net:
        """Read a net prototxt (any Caffe generation, upgraded on read) and build it."""
        from datakit.formats.prototxt import read_net  # noqa: PLC0415
        kwargs.setdefault("source", path)
        return cls(read_net(path), phase, **kwargs)

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

    # -- running --------------------------------------------------------------
    def forward_layer(self, i: int) -> float:
        """Reshape and run layer ``i``; its weighted loss (0.0 when it has none)."""
        layer, bottoms, tops = self.layers[i], self.bottom_vecs[i], self.top_vecs[i]
        layer.reshape(bottoms, tops)
        layer.forward(bottoms, tops)
        loss = 0.0
        for t, w in zip(tops, self.loss_weights[i]):
            if w:
                loss += w * float(t.data.sum())
        return loss

    def backward_layer(self, i: int) -> None:
        """Run layer ``i``'s backward (seeding its loss tops with their weights)."""
        if not self.layer_need_backward[i]:
            return
        tops = self.top_vecs[i]
        for t, w in zip(tops, self.loss_weights[i]):
            if w:
                t.diff = self.xp.full(t.shape, w, dtype=self.dtype)
        self.layers[i].backward(tops, self.bottom_need_backward[i], self.bottom_vecs[i])

    def forward(self) -> float:
        """Run every layer (data layers fetch their next batch); the weighted loss."""
        return sum(self.forward_layer(i) for i in range(len(self.layers)))

    def backward(self) -> None:
        """Gradients of the loss: bottom diffs written, param diffs accumulated."""
        for i in range(len(self.layers) - 1, -1, -1):
            self.backward_layer(i)

    def forward_backward(self) -> float:
        loss = self.forward()
        self.backward()
        return loss

    def clear_param_diffs(self) -> None:
        for p in self.learnable_params:
            p.blob.zero_diff()

    def outputs(self) -> dict[str, np.ndarray]:
        """Host copies of the output blobs (produced and never consumed), e.g. loss, accuracy."""
        return {name: np.array(to_host(self.blobs[name].data)) for name in self.output_names}

    # -- weights --------------------------------------------------------------
    def share_trained_layers_with(self, other: Net) -> None:
        """Use ``other``'s param blobs for layers of the same name (TEST net ← TRAIN net)."""
        for layer in self.layers:
            if not layer.blobs or layer.name not in other.layer_names:
                continue
            src = other.layer(layer.name)
            if len(src.blobs) != len(layer.blobs):
                raise FormatError(f"layer {layer.name}: {len(src.blobs)} blobs in net {other.name!r}, "
                                  f"{len(layer.blobs)} here")
            for k, (mine, theirs) in enumerate(zip(layer.blobs, src.blobs)):
                if mine.shape != theirs.shape:
                    raise FormatError(f"layer {layer.name}: blob {k} has shape {theirs.shape} in the "
                                      f"{_phase_name(other.phase)} net, {mine.shape} in the "
                                      f"{_phase_name(self.phase)} net")
                layer.blobs[k] = theirs
        for p in self.learnable_params:
            p.blob = self.layer(p.layer_name).blobs[p.index]

    def copy_from(self, net_param: caffe_pb2.NetParameter, *, source: str = "caffemodel") -> CopyReport:
        """Copy weights by layer name from a (current-form) NetParameter with blobs."""
        report = CopyReport()
        seen: set[str] = set()
        for src in net_param.layer:
            if not len(src.blobs):
                continue
            if src.name not in self.layer_names:
                report.ignored.append(src.name)
                continue
            layer = self.layer(src.name)
            if len(src.blobs) != len(layer.blobs):
                raise FormatError(f"layer {src.name}: {source} has {len(src.blobs)} blob(s), the net "
                                  f"expects {len(layer.blobs)} (check bias_term and the layer type)")
            arrays = []
            for k, (bp, blob) in enumerate(zip(src.blobs, layer.blobs)):
                arr = blob_to_array(bp, where=f"{source}: layer {src.name} blob {k}")
                arrays.append(self._fit_shape(arr, bp, blob.shape, src.name, k, source))
            for blob, arr in zip(layer.blobs, arrays):
                blob.data[...] = self.xp.asarray(arr.astype(self.dtype, copy=False))
            report.copied.append(src.name)
            seen.add(src.name)
        report.initialised = [layer.name for layer in self.layers if layer.blobs and layer.name not in seen]
        return report

    @staticmethod
    def _fit_shape(arr: np.ndarray, bp: caffe_pb2.BlobProto, want: tuple[int, ...], layer: str,
                   k: int, source: str) -> np.ndarray:
        """Accept the exact shape, or a legacy 4-D (num, channels, height, width) with the same count."""
        if arr.shape == want:
            return arr
        if not bp.HasField("shape") and len(want) <= 4:
            legacy = (1,) * (4 - len(want)) + tuple(want)
            if tuple(blob_shape(bp)) == legacy:
                return arr.reshape(want)
        got = ",".join(str(d) for d in arr.shape)
        exp = ",".join(str(d) for d in want)
        raise FormatError(f"layer {layer}: {source} blob {k} has shape ({got}), net expects ({exp})")

    def to_proto(self, write_diff: bool = False) -> caffe_pb2.NetParameter:
        """A NetParameter with every layer and its blobs (a .caffemodel Caffe can load)."""
        out = caffe_pb2.NetParameter(name=self.name)
        for layer, auto in zip(self.layers, self._auto_split):
            if auto:
                continue
            lp = out.layer.add()
            lp.CopyFrom(layer.param)
            lp.name = layer.name
            del lp.blobs[:]
            for blob in layer.blobs:
                diff = to_host(blob.diff) if write_diff else None
                lp.blobs.append(array_to_blob(to_host(blob.data), diff=diff))
        return out

    def param_arrays(self) -> dict[str, list[np.ndarray]]:
        """{layer name: host copies of its blobs} for layers with params."""
        return {layer.name: [np.array(to_host(b.data)) for b in layer.blobs]
                for layer in self.layers if layer.blobs}

    def __repr__(self) -> str:
        return f"Net({self.name!r}, {_phase_name(self.phase)}, {len(self.layers)} layers)"


@dataclass(frozen=True)
class ParamSpecInfo:
    layer: str
    lr_mult: float


def _phase_name(phase: int) -> str:
    return "TRAIN" if phase == TRAIN else "TEST"
