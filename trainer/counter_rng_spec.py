"""The constants that define ``trainer.counter_rng``'s generator, shared by its NumPy twin and its
compiled loops (``trainer.counter_rng_cpu``), so the two cannot drift apart (a leaf: no imports
from the trainer)."""

from __future__ import annotations

import math

import numpy as np

_U, _I, _F = np.uint64, np.int32, np.float32
GAMMA = _U(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = _U(0xBF58476D1CE4E5B9), _U(0x94D049BB133111EB)
_LN2 = _F(math.log(2.0))
_SQRT2 = _F(math.sqrt(2.0))
_ANGLE = _F(math.pi * 2.0 ** -23)        # 24-bit angle units to radians: 2π / 2^24
_MANT = _F(2.0 ** -23)
_UNIT = _F(2.0 ** -24)
# 2·atanh(s) = 2s + s³·(2/3 + s²·(2/5 + s²·(2/7 + s²·2/9))), |s| <= 0.172
_L3, _L5, _L7, _L9 = _F(2 / 3), _F(2 / 5), _F(2 / 7), _F(2 / 9)
# Taylor series of sin and cos on [-π/4, π/4]
_S3, _S5, _S7, _S9 = _F(-1 / 6), _F(1 / 120), _F(-1 / 5040), _F(1 / 362880)
_C2, _C4, _C6, _C8, _C10 = _F(-1 / 2), _F(1 / 24), _F(-1 / 720), _F(1 / 40320), _F(-1 / 3628800)
# (threshold, shift): shift x left while it is below the threshold, until 2^32 <= x < 2^33
_NORMALISE = ((1 << 17, 16), (1 << 25, 8), (1 << 29, 4), (1 << 31, 2), (1 << 32, 1), (1 << 32, 1))
