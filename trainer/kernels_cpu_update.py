"""The compiled update steps of ``trainer.updates``: weight decay, the rule and ``data -= update`` in one pass.

Each rule's ``apply`` makes ten to thirty passes over every blob in NumPy (the decay product, the
history's scalings, the scaled gradient, in-place sums, the copy into ``diff``, the subtraction) and
allocates blob-sized temporaries; for CaffeNet's 61 M weights that is most of a fine-tuning step's
time outside the GEMMs. These loops read each blob and its history once and write each once.

Contract: the same float32 operations as the NumPy lines of ``trainer.updates``, in their order,
element by element, with no fused multiply-add (numba does not contract), and the scalars computed
by the caller exactly as the NumPy lines compute them, so both give the same bits
(tests/test_updates.py). L2 decay ``g = diff + decay·w`` is applied only when decay is not 0, as the
NumPy path skips it then (so a -0 gradient stays -0). ``diff`` ends holding the update (what
``snapshot_diff`` writes, as in Caffe). Flat C-contiguous arrays; elements ``lo:hi`` only, so
``kernels_dispatch.parallel`` may split a blob over the cores.
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
_jit_inline = numba.njit(cache=True, nogil=True, error_model="numpy", forceinline=True)


@_jit_inline
def _grad(g, w, i, decay):  # pragma: no cover - compiled
    return g[i] if decay == 0 else g[i] + decay * w[i]


@_jit
def sgd_step(data, diff, hist, decay, momentum, rate, lo, hi):  # pragma: no cover - compiled
    """h = h·momentum + rate·g; w -= h."""
    w, g, h = data[lo:hi], diff[lo:hi], hist[lo:hi]  # indexed from 0 up: no wrap-around test
    for i in range(w.size):
        v = h[i] * momentum + rate * _grad(g, w, i, decay)
        h[i] = v
        g[i] = v
        w[i] = w[i] - v


@_jit
def nesterov_step(data, diff, hist, decay, momentum, rate, one_plus_m, lo, hi):  # pragma: no cover - compiled
    """h' = h·momentum + rate·g; update = (1 + momentum)·h' - momentum·h."""
    w, g, h = data[lo:hi], diff[lo:hi], hist[lo:hi]
    for i in range(w.size):
        before = h[i]
        v = before * momentum + rate * _grad(g, w, i, decay)
        h[i] = v
        u = one_plus_m * v - momentum * before
        g[i] = u
        w[i] = w[i] - u


@_jit
def adagrad_step(data, diff, hist, decay, rate, delta, lo, hi):  # pragma: no cover - compiled
    """h += g²; update = rate·g / (√h + δ)."""
    w, g, h = data[lo:hi], diff[lo:hi], hist[lo:hi]
    for i in range(w.size):
        gi = _grad(g, w, i, decay)
        s = h[i] + gi * gi
        h[i] = s
        u = rate * gi / (np.sqrt(s) + delta)
        g[i] = u
        w[i] = w[i] - u


@_jit
def rmsprop_step(data, diff, hist, decay, rms_decay, one_minus_d, rate, delta, lo, hi):  # pragma: no cover
    """h = h·d + (1 - d)·g·g; update = rate·g / (√h + δ)."""
    w, g, h = data[lo:hi], diff[lo:hi], hist[lo:hi]
    for i in range(w.size):
        gi = _grad(g, w, i, decay)
        s = h[i] * rms_decay + one_minus_d * gi * gi
        h[i] = s
        u = rate * gi / (np.sqrt(s) + delta)
        g[i] = u
        w[i] = w[i] - u


@_jit
def adadelta_step(data, diff, g2, u2, decay, momentum, one_minus_m, eps, rate, lo, hi):  # pragma: no cover
    """g2 = g2·m + (1 - m)·g·g; step = g·√((u2 + ε) / (g2 + ε)); u2 = u2·m + (1 - m)·step²; update = rate·step."""
    w, g, a, b = data[lo:hi], diff[lo:hi], g2[lo:hi], u2[lo:hi]
    for i in range(w.size):
        gi = _grad(g, w, i, decay)
        s = a[i] * momentum + one_minus_m * gi * gi
        a[i] = s
        step = gi * np.sqrt((b[i] + eps) / (s + eps))
        b[i] = b[i] * momentum + one_minus_m * step * step
        u = rate * step
        g[i] = u
        w[i] = w[i] - u


@_jit
def adam_step(data, diff, m1, m2, decay, b1, one_minus_b1, b2, one_minus_b2, rate_corrected, delta,
              lo, hi):  # pragma: no cover - compiled
    """m = m·β1 + (1 - β1)·g; v = v·β2 + (1 - β2)·g·g; update = (rate·correction)·m / (√v + δ)."""
    w, g, m, v = data[lo:hi], diff[lo:hi], m1[lo:hi], m2[lo:hi]
    for i in range(w.size):
        gi = _grad(g, w, i, decay)
        mi = m[i] * b1 + one_minus_b1 * gi
        m[i] = mi
        vi = v[i] * b2 + one_minus_b2 * gi * gi
        v[i] = vi
        u = rate_corrected * mi / (np.sqrt(vi) + delta)
        g[i] = u
        w[i] = w[i] - u
