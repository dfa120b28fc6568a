"""The compiled (numba) loops of ``trainer.counter_rng``; imported only by ``counter_rng._impl``.

Their arithmetic is the array twin's, in its order (the twin finds the exponent of ``u1`` with
one exact frexp where these loops shift; both give the same integers), so the values are the
same bit for bit (``tests/test_counter_rng.py``). Module-level functions so numba's on-disk
cache holds them (a closure's cache key changed with every process). ``error_model="numpy"``
drops the zero-division check that kept LLVM from vectorising the loops (AVX2: 8 lanes); the
loops are serial and release the GIL, and ``counter_rng`` splits them over ``trainer.kernels``'
thread pool by pair index, which no split can change.
"""

from __future__ import annotations

import numba
import numpy as np

from trainer.counter_rng_spec import (_ANGLE, _C2, _C4, _C6, _C8, _C10, _L3, _L5, _L7, _L9, _LN2, _MANT, _MIX1,
                                      _MIX2, _NORMALISE, _S3, _S5, _S7, _S9, _SQRT2, _UNIT, GAMMA)

_U, _I, _F = np.uint64, np.int32, np.float32
_jit = numba.njit(cache=True, nogil=True, error_model="numpy")


@_jit
def _mix(seed, j):  # pragma: no cover - compiled
    z = seed + (_U(j) + _U(1)) * GAMMA
    z = (z ^ (z >> _U(30))) * _MIX1
    z = (z ^ (z >> _U(27))) * _MIX2
    return z ^ (z >> _U(31))


@_jit
def normal_pairs(flat, seed, offset, scale, lo, hi):  # pragma: no cover - compiled
    """flat[2j], flat[2j+1] for pairs lo..hi-1, all whole (hi <= flat.size // 2)."""
    out = flat[2 * lo:2 * hi]  # indices from 0 up: numba drops the wrap-around test
    for t in range(hi - lo):
        z = _mix(seed, lo + t)
        x = ((z >> _U(32)) << _U(1)) | _U(1)
        k = _I(1)
        for threshold, shift in _NORMALISE:
            below = x < _U(threshold)
            x = x << _U(shift) if below else x
            k = k + _I(shift) if below else k
        m = _F(_I(x >> _U(9))) * _MANT
        big = m > _SQRT2
        m = m * _F(0.5) if big else m
        k = k - _I(1) if big else k
        f = m - _F(1.0)
        s = f / (_F(2.0) + f)
        s2 = s * s
        ln_m = s * _F(2.0) + s * s2 * (_L3 + s2 * (_L5 + s2 * (_L7 + s2 * _L9)))
        e = _F(k) * _LN2 - ln_m
        e = e if e > _F(0.0) else _F(0.0)
        r = np.sqrt(e * _F(2.0))
        w = _I((z & _U(0xFFFFFFFF)) >> _U(8))
        q = (w + _I(1 << 21)) >> _I(22)
        a = _F(w - (q << _I(22))) * _ANGLE
        a2 = a * a
        sn = a + a * a2 * (_S3 + a2 * (_S5 + a2 * (_S7 + a2 * _S9)))
        cs = _F(1.0) + a2 * (_C2 + a2 * (_C4 + a2 * (_C6 + a2 * (_C8 + a2 * _C10))))
        q = q & _I(3)
        swap = (q & _I(1)) == _I(1)  # selects, not branches: an if/elif chain stops vectorisation
        c0 = sn if swap else cs
        s0 = cs if swap else sn
        c0 = -c0 if (q == _I(1)) or (q == _I(2)) else c0
        s0 = -s0 if q >= _I(2) else s0
        out[2 * t] = offset + scale * (r * c0)
        out[2 * t + 1] = offset + scale * (r * s0)


@_jit
def uniform_pairs(flat, seed, offset, scale, lo, hi):  # pragma: no cover - compiled
    out = flat[2 * lo:2 * hi]
    for t in range(hi - lo):
        z = _mix(seed, lo + t)
        out[2 * t] = offset + scale * (_F(_I(z >> _U(40))) * _UNIT)
        out[2 * t + 1] = offset + scale * (_F(_I((z >> _U(8)) & _U(0xFFFFFF))) * _UNIT)
