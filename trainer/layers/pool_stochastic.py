"""Stochastic pooling (Zeiler & Fergus 2013) as Caffe's CUDA kernels define it, on ``xp``.

Windows start at ``p·stride`` and are clipped to the map: Caffe's kernels ignore ``pad``
(it only counts in the output size), and so does this; a window wholly outside the map gives 0.
TRAIN picks one element per window with probability proportional to its value (the first
whose running sum reaches u·Σ, u uniform in [0, 1)) and routes the gradient to it; TEST
outputs Σx² / (FLT_MIN + Σx), the activation-weighted average.
"""

from __future__ import annotations

from typing import Any

from trainer.backend import get_array_module as _xp

FLT_MIN = 1.1754943508222875e-38


def windows(x: Any, kh: int, kw: int, sh: int, sw: int, oh: int, ow: int) -> Any:
    """(kh·kw, N, C, oh, ow): every window's elements, zeros where a window leaves the map."""
    xp = _xp(x)
    n, c, h, w = x.shape
    hp, wp = max(h, (oh - 1) * sh + kh), max(w, (ow - 1) * sw + kw)
    if (hp, wp) != (h, w):
        padded = xp.zeros((n, c, hp, wp), dtype=x.dtype)
        padded[:, :, :h, :w] = x
        x = padded
    return xp.stack([x[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
                     for i in range(kh) for j in range(kw)], axis=0)


def forward_train(x: Any, u: Any, kh: int, kw: int, sh: int, sw: int, oh: int, ow: int) -> tuple[Any, Any]:
    """(top, index of the chosen element within its window) for uniforms ``u`` of the top's shape."""
    xp = _xp(x)
    win = windows(x, kh, kw, sh, sw, oh, ow)
    reached = (xp.cumsum(win, axis=0) >= u * win.sum(axis=0)).astype(x.dtype)
    index = xp.argmax(reached, axis=0)
    return xp.take_along_axis(win, index[None], axis=0)[0], index


def forward_test(x: Any, kh: int, kw: int, sh: int, sw: int, oh: int, ow: int) -> Any:
    win = windows(x, kh, kw, sh, sw, oh, ow)
    return (win * win).sum(axis=0) / (FLT_MIN + win.sum(axis=0))


def backward_train(dy: Any, index: Any, shape: tuple[int, ...], kh: int, kw: int, sh: int, sw: int) -> Any:
    """Each top gradient added to the element its window chose."""
    return _scatter(dy, shape, kh, kw, sh, sw, lambda k: dy * (index == k))


def backward_test(dy: Any, x: Any, kh: int, kw: int, sh: int, sw: int) -> Any:
    """The derivative of Σx²/Σx (Caffe has no TEST backward; this is the formula's own)."""
    oh, ow = dy.shape[2:]
    win = windows(x, kh, kw, sh, sw, oh, ow)
    s1, s2 = FLT_MIN + win.sum(axis=0), (win * win).sum(axis=0)
    return _scatter(dy, x.shape, kh, kw, sh, sw, lambda k: dy * (2 * win[k] * s1 - s2) / (s1 * s1))


def _scatter(dy: Any, shape: tuple[int, ...], kh: int, kw: int, sh: int, sw: int, part: Any) -> Any:
    xp = _xp(dy)
    n, c, h, w = shape
    oh, ow = dy.shape[2:]
    hp, wp = max(h, (oh - 1) * sh + kh), max(w, (ow - 1) * sw + kw)
    dx = xp.zeros((n, c, hp, wp), dtype=dy.dtype)
    for k in range(kh * kw):
        i, j = divmod(k, kw)
        dx[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += part(k)
    return xp.ascontiguousarray(dx[:, :, :h, :w])
