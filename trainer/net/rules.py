"""Which layers a NetParameter gives one phase, before any layer is built.

Caffe's Net::Init starts with two rewrites of the layer list, both pure functions
of the NetParameter: ``filter_net`` keeps the layers whose include/exclude rules
the NetState meets (Net::FilterNet, Net::StateMeetsRule), and ``insert_splits``
puts a Split layer after every top that feeds more than one bottom
(InsertSplits), so each consumer gets its own gradient blob and the Split adds
them up. Both raise FormatError naming the layer when the list is inconsistent.
``draw`` uses ``filter_net`` too, so a drawing shows the layers training builds.
"""

from __future__ import annotations

import copy

from datakit.errors import FormatError
from datakit.formats import caffe_pb2

from trainer.layers import Layer

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def phase_name(phase: int) -> str:
    """"TRAIN" or "TEST", as Caffe's logs and messages name a phase."""
    return "TRAIN" if phase == TRAIN else "TEST"


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


def default_loss_weights(lp: caffe_pb2.LayerParameter, cls: type[Layer]) -> list[float]:
    """The layer's loss_weight values, one per top; by default 1 for a loss layer's first top, else 0."""
    n = len(lp.top)
    if lp.loss_weight:
        if len(lp.loss_weight) != n:
            raise FormatError(f"layer {lp.name}: {len(lp.loss_weight)} loss_weight values for {n} tops")
        return [float(w) for w in lp.loss_weight]
    return [1.0 if (cls.is_loss and i == 0) else 0.0 for i in range(n)]


def insert_splits(layers: list[caffe_pb2.LayerParameter],
                  inserted: set[str] | None = None) -> list[caffe_pb2.LayerParameter]:
    """Caffe's InsertSplits: a Split layer after every top that feeds more than one bottom.

    A top with an explicit non-zero ``loss_weight`` counts as one more use, as in Caffe: when
    another layer also reads it, the Split's first top (``..._split_0``, then a net output) carries
    the loss weight and the readers get ``_split_1`` on, so the top's gradient is the loss weight
    plus what the readers send back (seeding the top itself overwrote the readers' gradient). The
    producer's weight for that top becomes 0 (Caffe clears all its loss weights, which drops those
    of its other tops and gives a loss layer its default weight back on top of the Split's).
    The names of the Split layers added are put in ``inserted`` when given.
    """
    last_top: dict[str, tuple[int, int]] = {}
    source_of: dict[tuple[int, int], tuple[int, int]] = {}
    consumers: dict[tuple[int, int], int] = {}
    loss_of: dict[tuple[int, int], float] = {}
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
        for j, weight in enumerate(lp.loss_weight[:len(lp.top)]):
            if weight:
                loss_of[(i, j)] = float(weight)
                consumers[(i, j)] = consumers.get((i, j), 0) + 1
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
                if (i, j) in loss_of:
                    split.loss_weight.extend([loss_of[(i, j)]] + [0.0] * (count - 1))
                    new.loss_weight[j] = 0.0
                    used[(i, j)] = 1  # _split_0 is the loss's: the readers take _split_1 on
                out.append(split)
                if inserted is not None:
                    inserted.add(split.name)
    return out


def _split_blob_name(blob: str, layer: str, top_index: int, k: int) -> str:
    return f"{blob}_{layer}_{top_index}_split_{k}"
