"""The compiled max pooling loops of ``trainer.kernels_cpu`` (its contracts hold here too).

Module-level functions, imported by ``kernels_cpu._build`` once numba is known to load:
the forward calls the window loops below, and numba's on-disk cache keeps a jitted
function that calls another only when both live at module level (as closures inside
``_build`` the second process recompiled them, the cache test in tests/test_kernels.py).
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)
_jit_inline = numba.njit(cache=True, nogil=True, forceinline=True)
# error_model="numpy" for the backward: no zero-division check on its index arithmetic.
_jit_flat = numba.njit(cache=True, nogil=True, error_model="numpy")
_ONE, _TWO, _THREE = np.uint64(1), np.uint64(2), np.uint64(3)


# Max pooling. Windows that lie inside the image (all but the edge ones) of the common
# 2x2 and 3x3 kernels (LeNet's, CaffeNet's, VGG's) run in a loop of their own
# (``_max_windows``) whose running maximum stays in registers, with the strict ``>`` as
# selects instead of branches (random data mispredicts half of them); every other window
# takes the general loop. Both keep the first maximum in row-major window order and let
# NaN never win (it starts from -inf of the input's dtype, ``neg``). The inner-window loop
# indexes flat arrays with unsigned offsets (kernels_cpu's rule) and is called with the
# kernel size and, for strides 1 and 2, the stride as constants (``forceinline`` has LLVM
# paste it into the caller, so the constants reach it; numba's own ``inline="always"`` ran
# as fast but doubled the first compile, 2.4 -> 4-5 s): LLVM then unrolls the window and
# vectorises the loop over a row's outputs, which a runtime stride prevents (LeNet's pool1
# forward 1.45 -> 0.4-0.7 ms, CaffeNet's pool1 at batch 16 14-16 -> 3-4 ms alone;
# benchmarks/RESULTS.md, session 6).
@_jit_inline
def _max_windows(xf, yf, af, neg, s0, uw, d, cnt, step, k):  # pragma: no cover - compiled
    # Outputs d .. d+cnt-1 of one row: k×k windows starting at s0 + t·step, rows uw apart. Called
    # with k and step constants, so LLVM unrolls the window loops and vectorises the loop over t.
    for t in range(cnt):
        o = s0 + t * step
        best = neg
        bi = 0
        for i in range(k):
            r = o + np.uint64(i) * uw
            for j in range(k):
                v = xf[r + np.uint64(j)]
                m = v > best
                best = v if m else best
                bi = i * k + j if m else bi
        yf[d + t] = best
        af[d + t] = bi


@_jit_inline
def _max_row(xf, yf, af, neg, s0, uw, d, cnt, step, kh):  # pragma: no cover - compiled
    if kh == 2:
        _max_windows(xf, yf, af, neg, s0, uw, d, cnt, step, 2)
    else:
        _max_windows(xf, yf, af, neg, s0, uw, d, cnt, step, 3)


@_jit
def max_pool_fwd(x, y, arg, neg, kh, kw, ph, pw, sh, sw, lo, hi):  # pragma: no cover - compiled
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    xf = x.reshape(n * c, h, w)
    yf = y.reshape(n * c, oh, ow)
    af = arg.reshape(n * c, oh, ow)
    xflat = x.reshape(x.size)
    yflat = y.reshape(y.size)
    aflat = arg.reshape(arg.size)
    uw = np.uint64(w)
    # outputs ox whose window [ox*sw - pw, ox*sw - pw + kw) lies inside [0, w)
    ox_lo = min(ow, (pw + sw - 1) // sw)
    ox_hi = max(ox_lo, min(ow, (w - kw + pw) // sw + 1))
    fast = (kh == 2 and kw == 2) or (kh == 3 and kw == 3)
    for p in range(lo, hi):
        plane, yp, ap = xf[p], yf[p], af[p]
        for oy in range(oh):
            hs = oy * sh - ph
            yr, ar = yp[oy], ap[oy]
            inner = fast and hs >= 0 and hs + kh <= h
            a, b = (ox_lo, ox_hi) if inner else (ow, ow)
            if inner and b > a:
                s0 = np.uint64((p * h + hs) * w + a * sw - pw)  # a*sw - pw >= 0 by ox_lo's choice
                d = np.uint64((p * oh + oy) * ow + a)
                cnt = np.uint64(b - a)
                if sw == 2:  # constants at each call: see _max_windows
                    _max_row(xflat, yflat, aflat, neg, s0, uw, d, cnt, _TWO, kh)
                elif sw == 1:
                    _max_row(xflat, yflat, aflat, neg, s0, uw, d, cnt, _ONE, kh)
                else:
                    _max_row(xflat, yflat, aflat, neg, s0, uw, d, cnt, np.uint64(sw), kh)
            # the general loop: the edge windows [0, a) and [b, ow), or the whole row
            for part in range(2):
                for ox in range(0 if part == 0 else b, a if part == 0 else ow):
                    ws = ox * sw - pw
                    best = neg
                    bi = 0
                    for yy in range(max(hs, 0), min(hs + kh, h)):
                        r = plane[yy]
                        base = (yy - hs) * kw - ws
                        for xx in range(max(ws, 0), min(ws + kw, w)):
                            v = r[xx]
                            m = v > best
                            best = v if m else best
                            bi = base + xx if m else bi
                    yr[ox] = best
                    ar[ox] = bi

@_jit_flat
def max_pool_bwd(dy, arg, dx, kh, kw, ph, pw, sh, sw, lo, hi):  # pragma: no cover - compiled
    # Flat arrays, unsigned offsets and an unsigned split of the window-local index (a signed
    # ``//`` adds Python's floor fix-up): CaffeNet pool1's backward 9 -> 6.5 ms at batch 16.
    n, c, h, w = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    dyf = dy.reshape(dy.size)
    af = arg.reshape(arg.size)
    dxf = dx.reshape(dx.size)
    plane = np.uint64(h * w)
    ukw = np.uint64(kw)
    zero = dx.dtype.type(0)
    for p in range(lo, hi):
        base = np.uint64(p) * plane
        for t in range(plane):
            dxf[base + t] = zero
        # Outputs in reverse order: a cell then gets its contributions in increasing window
        # offset i*kw+j, the order in which the NumPy twin adds them. (The window-local
        # index is split with a constant divisor for the common kernel widths.)
        obase = p * oh * ow
        for oy in range(oh - 1, -1, -1):
            y0 = oy * sh - ph
            for ox in range(ow - 1, -1, -1):
                q = np.uint64(obase + oy * ow + ox)
                a = np.uint64(af[q])
                if kw == 2:
                    ai, aj = a >> _ONE, a & _ONE
                elif kw == 3:
                    ai, aj = a // _THREE, a % _THREE
                else:
                    ai, aj = a // ukw, a % ukw
                yy = y0 + np.int64(ai)
                xx = ox * sw - pw + np.int64(aj)
                if 0 <= yy < h and 0 <= xx < w:
                    dxf[base + np.uint64(yy * w + xx)] += dyf[q]
