"""Caffe's parameter update rules (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam) on plain arrays.

Written against a minimal Param shape (``data``, ``diff``, ``lr_mult``,
``decay_mult``) so the arithmetic can be tested without a Net. The order of
operations is Caffe's ``SGDSolver::ApplyUpdate``: clip all gradients by their
global L2 norm, then per blob divide by ``iter_size``, add weight decay, turn
the gradient into an update with the rule's history, and ``data -= update``.

On host float32 blobs with L2 decay each rule runs as one compiled loop per blob
(``trainer.kernels_cpu_update``, the same bits as the NumPy lines here, which stay the
reference and the path for CuPy, float64, L1 and ``DATAKIT_COMPILED=0``).

History layout follows Caffe's SolverState: one blob per learnable param, and
for Adam/AdaDelta a second full set appended after the first (``m`` then ``v``;
gradient-square then update-square).
"""

from __future__ import annotations

from typing import Any, Protocol
from collections.abc import Sequence

import numpy as np

from datakit.errors import ConfigError
from datakit.formats.upgrade import upgrade_solver
from trainer import kernels_cpu, kernels_dispatch


class ParamLike(Protocol):
    data: Any
    diff: Any
    lr_mult: float
    decay_mult: float


#: Caffe's `type` strings of the update rules.
RULE_NAMES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")


def solver_type_name(param) -> str:
    """The update rule a SolverParameter asks for (`type`, else the legacy `solver_type` enum,
    converted by ``datakit.formats.upgrade``, where every old form is read)."""
    if param.HasField("solver_type") and not param.HasField("type"):
        param = upgrade_solver(param)
    name = param.type if param.HasField("type") else "SGD"
    for known in RULE_NAMES:
        if known.lower() == name.lower():
            return known
    raise ConfigError(f"solver: unknown type {name!r}; expected one of {', '.join(RULE_NAMES)}")


class UpdateRule:
    """One solver type: owns the history blobs and applies one update to a list of params."""

    name = "SGD"
    history_sets = 1

    def __init__(self, params: Sequence[ParamLike], *, momentum: float = 0.0, weight_decay: float = 0.0,
                 regularization: str = "L2", clip_gradients: float = -1.0, iter_size: int = 1,
                 delta: float = 1e-8, momentum2: float = 0.999, rms_decay: float = 0.99, xp=np) -> None:
        if regularization not in ("L1", "L2"):
            raise ConfigError(f"solver: regularization_type must be L1 or L2, got {regularization!r}")
        if iter_size < 1:
            raise ConfigError(f"solver: iter_size must be >= 1, got {iter_size}")
        self.params = list(params)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.regularization = regularization
        self.clip = float(clip_gradients)
        self.iter_size = int(iter_size)
        self.delta = float(delta)
        self.momentum2 = float(momentum2)
        self.rms_decay = float(rms_decay)
        self.xp = xp
        self.history = [xp.zeros_like(p.data) for _ in range(self.history_sets) for p in self.params]
        #: (norm, factor) of the last update's gradient clipping, None when it scaled nothing
        self.clipped: tuple[float, float] | None = None

    # -- the pieces of ApplyUpdate -------------------------------------------------------------
    def active(self) -> list[int]:
        """Indices of the params that learn; lr_mult 0 blobs are left bit-identical."""
        return [i for i, p in enumerate(self.params) if p.lr_mult != 0]

    def clip_gradients(self) -> float:
        """Rescale every diff when the global L2 norm exceeds ``clip_gradients``; returns the norm.

        ``clipped`` then holds (norm, factor) of this update, None when nothing was scaled (the
        solver logs Caffe's "Gradient clipping" line from it).
        """
        self.clipped = None
        if self.clip < 0:
            return -1.0
        sumsq = sum(float((self.params[i].diff.astype(np.float64) ** 2).sum()) for i in self.active())
        norm = sumsq ** 0.5
        if norm > self.clip:
            factor = np.float32(self.clip / norm)
            self.clipped = (norm, float(factor))
            for i in self.active():
                diff = self.params[i].diff
                diff *= factor
        return norm

    def normalize(self, i: int) -> None:
        if self.iter_size != 1:
            diff = self.params[i].diff
            diff *= np.float32(1.0 / self.iter_size)

    def regularize(self, i: int) -> None:
        p = self.params[i]
        local_decay = np.float32(self.weight_decay * p.decay_mult)
        if local_decay == 0:
            return
        diff = p.diff
        if self.regularization == "L2":
            diff += local_decay * p.data
        else:
            diff += local_decay * self.xp.sign(p.data)

    def compute_update(self, i: int, rate: float, it: int) -> None:
        """Turn ``params[i].diff`` into the value to subtract (Caffe's ComputeUpdateValue)."""
        p = self.params[i]
        h = self.history[i]
        local_rate = np.float32(rate * p.lr_mult)
        h *= np.float32(self.momentum)
        h += local_rate * p.diff
        p.diff[...] = h

    #: the compiled loop of ``trainer.kernels_cpu_update`` doing this rule's ``regularize``,
    #: ``compute_update`` and ``data -= diff`` in one pass (a subclass that changes either keeps NumPy)
    _KERNEL = "sgd_step"

    def _kernel_scalars(self, i: int, rate: float, it: int) -> tuple[Any, ...]:
        """The kernel's scalars after the decay, as the NumPy lines compute them (float32)."""
        return np.float32(self.momentum), np.float32(rate * self.params[i].lr_mult)

    def _step_compiled(self, i: int, rate: float, it: int) -> bool:
        """L2 decay and this rule on host float32 blobs as one compiled pass (the same bits as the
        NumPy lines, a few passes over each blob instead of ten to thirty). False where the NumPy lines
        must run: L1, CuPy or float64 arrays, a non-contiguous blob, numba missing or turned off, or a
        subclass that overrides ``regularize`` or ``compute_update``."""
        cls = type(self)
        owner = next(k for k in cls.__mro__ if "_KERNEL" in vars(k))  # the class whose loop _KERNEL names
        own_update = vars(owner).get("compute_update", UpdateRule.compute_update)
        if (cls.regularize is not UpdateRule.regularize or cls.compute_update is not own_update
                or self.regularization != "L2" or self.xp is not np or not kernels_dispatch.compiled_available()):
            return False
        p = self.params[i]
        history = self.history[i::len(self.params)]  # this blob's history sets (Adam, AdaDelta: two)
        arrays = (p.data, p.diff, *history)
        if any(not isinstance(a, np.ndarray) or a.dtype != np.float32 or not a.flags.c_contiguous for a in arrays):
            return False
        flat = [a.reshape(-1) for a in arrays]
        scalars = (np.float32(self.weight_decay * p.decay_mult), *self._kernel_scalars(i, rate, it))
        fn = kernels_cpu.kernel(self._KERNEL)
        kernels_dispatch.parallel(flat[0].size, flat[0].size, lambda lo, hi: fn(*flat, *scalars, lo, hi))
        return True

    def apply(self, rate: float, it: int) -> None:
        """One full update at iteration ``it`` with learning rate ``rate``; data -= update."""
        self.clip_gradients()
        for i in self.active():
            self.normalize(i)
            if self._step_compiled(i, rate, it):
                continue
            self.regularize(i)
            self.compute_update(i, rate, it)
            data = self.params[i].data  # Param exposes data/diff as read-only properties: update in place
            data -= self.params[i].diff


class Nesterov(UpdateRule):
    name = "Nesterov"
    _KERNEL = "nesterov_step"

    def _kernel_scalars(self, i: int, rate: float, it: int) -> tuple[Any, ...]:
        m = np.float32(self.momentum)
        return m, np.float32(rate * self.params[i].lr_mult), np.float32(1) + m

    def compute_update(self, i: int, rate: float, it: int) -> None:
        p = self.params[i]
        h = self.history[i]
        m = np.float32(self.momentum)
        before = h.copy()
        h *= m
        h += np.float32(rate * p.lr_mult) * p.diff
        p.diff[...] = (np.float32(1) + m) * h - m * before


class AdaGrad(UpdateRule):
    name = "AdaGrad"
    _KERNEL = "adagrad_step"

    def _kernel_scalars(self, i: int, rate: float, it: int) -> tuple[Any, ...]:
        return np.float32(rate * self.params[i].lr_mult), np.float32(self.delta)

    def compute_update(self, i: int, rate: float, it: int) -> None:
        p = self.params[i]
        h = self.history[i]
        h += p.diff * p.diff
        p.diff[...] = np.float32(rate * p.lr_mult) * p.diff / (self.xp.sqrt(h) + np.float32(self.delta))


class RMSProp(UpdateRule):
    name = "RMSProp"
    _KERNEL = "rmsprop_step"

    def _kernel_scalars(self, i: int, rate: float, it: int) -> tuple[Any, ...]:
        d = np.float32(self.rms_decay)
        return d, np.float32(1) - d, np.float32(rate * self.params[i].lr_mult), np.float32(self.delta)

    def compute_update(self, i: int, rate: float, it: int) -> None:
        p = self.params[i]
        h = self.history[i]
        d = np.float32(self.rms_decay)
        h *= d
        h += (np.float32(1) - d) * p.diff * p.diff
        p.diff[...] = np.float32(rate * p.lr_mult) * p.diff / (self.xp.sqrt(h) + np.float32(self.delta))


class AdaDelta(UpdateRule):
    name = "AdaDelta"
    history_sets = 2
    _KERNEL = "adadelta_step"

    def _kernel_scalars(self, i: int, rate: float, it: int) -> tuple[Any, ...]:
        m = np.float32(self.momentum)
        return m, np.float32(1) - m, np.float32(self.delta), np.float32(rate * self.params[i].lr_mult)

    def compute_update(self, i: int, rate: float, it: int) -> None:
        p = self.params[i]
        g2 = self.history[i]
        u2 = self.history[i + len(self.params)]
        m = np.float32(self.momentum)
        eps = np.float32(self.delta)
        g2 *= m
        g2 += (np.float32(1) - m) * p.diff * p.diff
        update = p.diff * self.xp.sqrt((u2 + eps) / (g2 + eps))
        u2 *= m
        u2 += (np.float32(1) - m) * update * update
        p.diff[...] = np.float32(rate * p.lr_mult) * update


class Adam(UpdateRule):
    name = "Adam"
    history_sets = 2
    _KERNEL = "adam_step"

    def _correction(self, it: int) -> np.float32:
        """√(1 - β2^t) / (1 - β1^t) at t = it + 1 (Caffe's bias correction, folded into the rate)."""
        t = it + 1
        return np.float32(np.sqrt(1.0 - float(np.float32(self.momentum2)) ** t)
                          / (1.0 - float(np.float32(self.momentum)) ** t))

    def _kernel_scalars(self, i: int, rate: float, it: int) -> tuple[Any, ...]:
        b1, b2 = np.float32(self.momentum), np.float32(self.momentum2)
        return (b1, np.float32(1) - b1, b2, np.float32(1) - b2,
                np.float32(rate * self.params[i].lr_mult) * self._correction(it), np.float32(self.delta))

    def compute_update(self, i: int, rate: float, it: int) -> None:
        p = self.params[i]
        m = self.history[i]
        v = self.history[i + len(self.params)]
        b1, b2 = np.float32(self.momentum), np.float32(self.momentum2)
        correction = self._correction(it)
        m *= b1
        m += (np.float32(1) - b1) * p.diff
        v *= b2
        v += (np.float32(1) - b2) * p.diff * p.diff
        p.diff[...] = np.float32(rate * p.lr_mult) * correction * m / (self.xp.sqrt(v) + np.float32(self.delta))


RULES: dict[str, type[UpdateRule]] = {
    "SGD": UpdateRule, "Nesterov": Nesterov, "AdaGrad": AdaGrad, "RMSProp": RMSProp,
    "AdaDelta": AdaDelta, "Adam": Adam,
}


def make_rule(solver_param, params: Sequence[ParamLike], xp=np) -> UpdateRule:
    """The update rule a SolverParameter names, configured from its fields."""
    name = solver_type_name(solver_param)
    # Adam's beta1 is `momentum` as in Caffe (no default: Caffe's examples set 0.9).
    return RULES[name](params, momentum=solver_param.momentum, weight_decay=solver_param.weight_decay,
                       regularization=solver_param.regularization_type or "L2",
                       clip_gradients=solver_param.clip_gradients, iter_size=solver_param.iter_size,
                       delta=solver_param.delta, momentum2=solver_param.momentum2,
                       rms_decay=solver_param.rms_decay, xp=xp)
