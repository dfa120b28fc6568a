"""The compiled SGD step of ``trainer.updates``: weight decay, momentum and ``data -= update`` in one pass.

``UpdateRule.apply`` for Caffe's plain SGD with L2 decay makes about sixteen passes over each blob
in NumPy (the decay product, the history's scaling, the scaled gradient, two in-place sums, the copy
into ``diff``, the subtraction) and allocates two blob-sized temporaries. For CaffeNet's 61 M weights
that is most of a fine-tuning step's time outside the GEMMs. This loop reads ``data``, ``diff`` and
the history once and writes each once.

Contract: the same float32 operations as the NumPy lines, in their order, element by element
(``g = diff + decay·data`` only when decay is not 0; ``h = h·momentum + rate·g``; ``diff = h``;
``data = data - h``), with no fused multiply-add (numba does not contract), so both give the same
bits (tests/test_updates.py). Flat C-contiguous arrays; elements ``lo:hi`` only, so
``kernels_dispatch.parallel`` may split a blob over the cores.
"""

from __future__ import annotations

import numba

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")


@_jit
def sgd_step(data, diff, hist, decay, momentum, rate, lo, hi):  # pragma: no cover - compiled
    w, g, h = data[lo:hi], diff[lo:hi], hist[lo:hi]  # indexed from 0 up: no wrap-around test
    if decay == 0:  # Caffe adds no decay term then (and neither does the NumPy path: -0 stays -0)
        for i in range(w.size):
            v = h[i] * momentum + rate * g[i]
            h[i] = v
            g[i] = v
            w[i] = w[i] - v
    else:
        for i in range(w.size):
            v = h[i] * momentum + rate * (g[i] + decay * w[i])
            h[i] = v
            g[i] = v
            w[i] = w[i] - v
