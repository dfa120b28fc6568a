"""Counter-based float draws for the fillers that run every forward (DummyData's refill).

Why not ``numpy.random.Generator``: ``Generator.normal`` draws float64 one value at a time and
the result is then cast to float32, which costs several times ``torch.randn`` of the same shape
on every forward of a net fed by DummyData. Here value ``i`` is a pure function of a 64-bit seed
and its pair index ``i // 2``, so the draw vectorises, splits over the cores in any way without
changing a bit (no per-thread stream to keep in step) and runs the same on CuPy.

The generator, stated exactly (the compiled loop and the array twin below both implement it and
the tests check that they agree bit for bit):

- pair ``j`` (0-based) hashes ``seed + (j + 1)·γ`` (mod 2^64) with SplitMix64's finaliser
  (γ = 0x9E3779B97F4A7C15; SplitMix64 itself is this Weyl sequence through this finaliser, so a
  run of pairs is a run of SplitMix64 outputs);
- normal: Box-Muller in float32. The high 32 bits ``h`` give ``u1 = (2h + 1) / 2^33`` (never 0,
  so the tail reaches 6.66σ), ``-ln u1`` from an exact integer normalisation and an atanh series;
  bits 8..31 give the angle, reduced exactly to a quadrant and [-π/4, π/4] and fed to Taylor
  polynomials. Element ``2j`` is ``mean + std·r·cos θ``, ``2j + 1`` is ``mean + std·r·sin θ``;
- uniform: bits 40..63 and 8..31 give two 24-bit uniforms ``u`` in [0, 1), one per element of
  the pair: ``low + (high - low)·u``.

Only IEEE-exact operations are used (integer ops, +, -, ·, /, sqrt, exact conversions), with no
fused multiply-add (numba does not contract, and an array ufunc stores every intermediate), which
is why the compiled loop, NumPy and CuPy give the same values. The arithmetic after the draw
(``mean + std·z``) runs in the output's dtype; the variate itself is float32 for both dtypes.
"""

from __future__ import annotations

import functools

from types import ModuleType
from typing import Any

import numpy as np

from trainer import kernels, kernels_cpu
from trainer.kernels_dispatch import parallel
from trainer.backend import get_array_module

from trainer.counter_rng_spec import (_ANGLE, _C2, _C4, _C6, _C8, _C10, _F, _I, _L3, _L5, _L7, _L9, _LN2, _MANT,
                                      _MIX1, _MIX2, _S3, _S5, _S7, _S9, _SQRT2, _U, _UNIT, GAMMA)


def draw_seed(rng: np.random.Generator) -> np.uint64:
    """One 64-bit seed from the layer's generator (one draw per refill, so snapshots resume it)."""
    return _U(rng.integers(0, 1 << 64, dtype=np.uint64))


# ------------------------------------------------------------ array twin ----
# Written with xp operations only, so the same lines run on NumPy and on CuPy (on the device).

def _mix_xp(xp: ModuleType, seed: np.uint64, lo: int, hi: int) -> Any:
    z = xp.arange(lo + 1, hi + 1, dtype=xp.uint64) * GAMMA + seed
    z = (z ^ (z >> _U(30))) * _MIX1
    z = (z ^ (z >> _U(27))) * _MIX2
    return z ^ (z >> _U(31))


def _normal_pairs_xp(xp: ModuleType, seed: np.uint64, lo: int, hi: int) -> tuple[Any, Any]:
    """float32 (r·cos θ, r·sin θ) for pairs lo..hi-1."""
    z = _mix_xp(xp, seed, lo, hi)
    x = ((z >> _U(32)) << _U(1)) | _U(1)
    # The compiled loop's shifts, in one exact step: x < 2^34 is exact in float64, so frexp gives
    # x = mant·2^ex with mant in [0.5, 1); shifting x to [2^32, 2^33) takes L = 33 - ex steps and
    # its top 24 bits are floor(mant·2^24).
    mant, ex = xp.frexp(x.astype(xp.float64))
    k = (_I(34) - ex).astype(xp.int32)                             # L + 1
    m = xp.floor(mant * 2.0 ** 24).astype(xp.float32) * _MANT        # in [1, 2)
    big = m > _SQRT2
    m = xp.where(big, m * _F(0.5), m)
    k = k - big.astype(xp.int32)
    f = m - _F(1.0)
    s = f / (_F(2.0) + f)
    s2 = s * s
    ln_m = s * _F(2.0) + s * s2 * (_L3 + s2 * (_L5 + s2 * (_L7 + s2 * _L9)))
    e = k.astype(xp.float32) * _LN2 - ln_m                         # -ln u1
    e = xp.where(e > _F(0.0), e, _F(0.0))
    r = xp.sqrt(e * _F(2.0))
    w = ((z & _U(0xFFFFFFFF)) >> _U(8)).astype(xp.int32)
    q = (w + _I(1 << 21)) >> _I(22)
    a = (w - (q << _I(22))).astype(xp.float32) * _ANGLE
    a2 = a * a
    sn = a + a * a2 * (_S3 + a2 * (_S5 + a2 * (_S7 + a2 * _S9)))
    cs = _F(1.0) + a2 * (_C2 + a2 * (_C4 + a2 * (_C6 + a2 * (_C8 + a2 * _C10))))
    q = q & _I(3)
    swap = (q & _I(1)) == _I(1)
    c0 = xp.where(swap, sn, cs)
    s0 = xp.where(swap, cs, sn)
    c0 = xp.where((q == _I(1)) | (q == _I(2)), -c0, c0)
    s0 = xp.where(q >= _I(2), -s0, s0)
    return r * c0, r * s0


def _uniform_pairs_xp(xp: ModuleType, seed: np.uint64, lo: int, hi: int) -> tuple[Any, Any]:
    """float32 uniforms in [0, 1) for pairs lo..hi-1 (first and second element)."""
    z = _mix_xp(xp, seed, lo, hi)
    u0 = (z >> _U(40)).astype(xp.int32).astype(xp.float32) * _UNIT
    u1 = ((z >> _U(8)) & _U(0xFFFFFF)).astype(xp.int32).astype(xp.float32) * _UNIT
    return u0, u1


def _store_xp(flat: Any, lo: int, hi: int, v0: Any, v1: Any, offset: Any, scale: Any) -> None:
    """flat[2j], flat[2j+1] = offset + scale·v for pairs lo..hi-1, the last pair cut at flat's end."""
    n = flat.shape[0]
    dt = flat.dtype
    a = offset + scale * v0.astype(dt)
    b = offset + scale * v1.astype(dt)
    full = min(hi, n // 2) - lo
    if full > 0:
        flat[2 * lo:2 * (lo + full):2] = a[:full]
        flat[2 * lo + 1:2 * (lo + full):2] = b[:full]
    if n % 2 and hi > n // 2:  # odd size: the last element is the first of its pair
        flat[n - 1:n] = a[full:full + 1]


# -------------------------------------------------------------- compiled ----

@functools.cache
def _impl() -> Any:
    """The compiled loops, loaded once; None when numba is missing or broken."""
    if kernels_cpu.impl() is None:  # numba missing, or DATAKIT_COMPILED=0
        return None
    try:
        from trainer import counter_rng_cpu as impl  # noqa: PLC0415 - imports numba
        impl.normal_pairs(np.zeros(2, np.float32), _U(1), _F(0.0), _F(1.0), 0, 1)
        return impl
    except Exception:  # a toolchain that cannot compile these loops: the twin runs
        return None


def compiled_available() -> bool:
    """True when host draws run the compiled loops (``kernels.use_compiled`` and numba allow it)."""
    return kernels.compiled_available() and _impl() is not None


# ---------------------------------------------------------------- public ----

def _fill(out: Any, seed: np.uint64, offset: float, scale: float, kind: str) -> None:
    if not out.flags.c_contiguous:  # reshape(-1) would copy: draw into a contiguous array, then copy in
        dense = get_array_module(out).empty(out.shape, dtype=out.dtype)
        _fill(dense, seed, offset, scale, kind)
        out[...] = dense
        return
    flat = out.reshape(-1)
    n = int(flat.shape[0])
    pairs = (n + 1) // 2
    off, sc = flat.dtype.type(offset), flat.dtype.type(scale)
    host = isinstance(out, np.ndarray)
    if host and out.dtype in (np.float32, np.float64) and compiled_available():
        fn = getattr(_impl(), f"{kind}_pairs")
        whole = n // 2
        parallel(whole, n, lambda lo, hi: fn(flat, seed, off, sc, lo, hi))
        if whole < pairs:  # the odd last element, from the twin (the same bits)
            _store_xp(flat, whole, pairs, *_PAIRS[kind](np, seed, whole, pairs), off, sc)
        return
    if not host:  # CuPy: the twin's lines as device kernels over the whole array
        _store_xp(flat, 0, pairs, *_PAIRS[kind](get_array_module(out), seed, 0, pairs), off, sc)
        return

    def chunks(lo: int, hi: int) -> None:  # cache-sized pieces; NumPy releases the GIL, so threads help
        for a in range(lo, hi, _TWIN_CHUNK):
            b = min(hi, a + _TWIN_CHUNK)
            _store_xp(flat, a, b, *_PAIRS[kind](np, seed, a, b), off, sc)
    parallel(pairs, n, chunks)


_TWIN_CHUNK = 1 << 13  # pairs per NumPy pass: its temporaries stay in the cache
_PAIRS = {"normal": _normal_pairs_xp, "uniform": _uniform_pairs_xp}


def normal(out: Any, seed: np.uint64, mean: float = 0.0, std: float = 1.0) -> None:
    """Fill ``out`` (a float NumPy or CuPy array; compiled for C-contiguous float32/float64) with N(mean, std²)."""
    _fill(out, seed, mean, std, "normal")


def uniform(out: Any, seed: np.uint64, low: float = 0.0, high: float = 1.0) -> None:
    """Fill ``out`` in place with ``low + (high - low)·k/2^24``, k uniform in 0 .. 2^24-1: U[low, high)
    on a 24-bit grid (in float32 the rounding of that sum may give ``high`` itself, as NumPy's may)."""
    _fill(out, seed, low, high - low, "uniform")
