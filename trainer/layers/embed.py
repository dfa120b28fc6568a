"""Caffe's Embed: integer indices to learned vectors (LRCN's word embedding)."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import register
from .base import Blob, Layer
from .learnable import filler_or_default, make_param_blob


@register("Embed")
class EmbedLayer(Layer):
    """top[..., :] = W[index] (+ b): W is (input_dim, num_output), the top is bottom.shape + (num_output,).

    Indices must be whole numbers in [0, input_dim). No gradient reaches the indices;
    W's gradient adds up the rows' gradients per index (``row_sums``: sort, then segment sums,
    one code path for NumPy and CuPy, linear in the rows) into the rows of W used; a one-hot
    GEMM would cost rows·input_dim·num_output multiply-adds (8.8 G for LRCN's 8801 words).
    """

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.embed_param
        if not p.num_output or not p.input_dim:
            raise self.error("embed_param needs num_output and input_dim, both positive")
        self.num_output, self.input_dim = int(p.num_output), int(p.input_dim)
        self.bias_term = bool(p.bias_term)
        self.blobs = [make_param_blob(self, 0, (self.input_dim, self.num_output),
                                      filler_or_default(p.HasField("weight_filler"), p.weight_filler))]
        if self.bias_term:
            self.blobs.append(make_param_blob(self, 1, (self.num_output,),
                                              filler_or_default(p.HasField("bias_filler"), p.bias_filler)))
        self._index: Any = None

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        tops[0].reshape(bottoms[0].shape + (self.num_output,))

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        xp = self.xp
        raw = bottoms[0].data.reshape(-1)
        index = raw.astype(np.int64)
        bad = (index != raw) | (index < 0) | (index >= self.input_dim)
        if bool(bad.any()):
            value = float(raw[xp.flatnonzero(bad)[0]])
            raise self.error(f"index {value:g} is not a whole number in 0..{self.input_dim - 1} (input_dim)")
        self._index = index
        y = xp.take(self.blobs[0].data, index, axis=0)
        if self.bias_term:
            y = y + self.blobs[1].data
        tops[0].data = y.reshape(tops[0].shape)

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        xp = self.xp
        dy = tops[0].diff.reshape(-1, self.num_output)
        if self.param_needs_grad(0):
            keys, totals = row_sums(xp, dy, self._index)
            self.blobs[0].diff[keys] += totals  # only the rows used: the net zeroed the rest
            self.finish_param_grad(0)
        if self.bias_term and self.param_needs_grad(1):
            self.add_param_grad(1, dy.sum(axis=0))
            self.finish_param_grad(1)


def row_sums(xp: Any, rows: Any, index: Any) -> tuple[Any, Any]:
    """(keys, totals): the distinct indices and, per key, Σ rows[k] over the k with index[k] == key.

    The rows are sorted by index and summed per run through a float64 running sum (exact
    enough for float32 rows). The keys are distinct, so ``grad[keys] += totals`` is a plain
    indexed add on NumPy and CuPy alike (no scatter-add, whose duplicate writes race on a GPU).
    """
    if rows.shape[0] == 0:
        return index[:0], rows[:0]
    order = xp.argsort(index, kind="stable")
    keys = index[order]
    running = xp.cumsum(xp.take(rows, order, axis=0).astype(np.float64), axis=0)
    last = xp.flatnonzero(xp.concatenate([keys[1:] != keys[:-1], xp.ones(1, dtype=bool)]))
    totals = xp.take(running, last, axis=0)
    totals[1:] -= totals[:-1].copy()
    return keys[last], totals.astype(rows.dtype)
