"""Caffe's learning-rate policies, one pure function of the iteration.

Kept apart from the solver so each formula can be tested against Caffe's
definition on its own. ``multistep`` is the only stateful policy in Caffe (it
keeps ``current_step``, saved in the SolverState); here the step is derived from
the iteration, which gives the same value and the same ``current_step`` to save.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from datakit.errors import ConfigError

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


def current_step(policy: str, it: int, *, stepsize: int = 0, stepvalues: Sequence[int] = ()) -> int:
    """The number of decays that have happened by iteration ``it`` (Caffe's ``current_step_``)."""
    if policy == "step":
        return it // stepsize if stepsize > 0 else 0
    if policy == "multistep":
        # Caffe advances current_step_ when iter >= stepvalue[current_step_].
        return bisect.bisect_right(sorted(stepvalues), it)
    return 0


def learning_rate(policy: str, it: int, *, base_lr: float, gamma: float = 0.0, power: float = 0.0,
                  stepsize: int = 0, stepvalues: Sequence[int] = (), max_iter: int = 0) -> float:
    """The rate Caffe's ``SGDSolver::GetLearningRate`` returns at iteration ``it``."""
    if policy == "fixed":
        return base_lr
    if policy == "step":
        return base_lr * gamma ** current_step(policy, it, stepsize=stepsize)
    if policy == "exp":
        return base_lr * gamma ** it
    if policy == "inv":
        return base_lr * (1.0 + gamma * it) ** (-power)
    if policy == "multistep":
        return base_lr * gamma ** current_step(policy, it, stepvalues=stepvalues)
    if policy == "poly":
        return base_lr * (1.0 - it / max_iter) ** power
    if policy == "sigmoid":
        # 1 / (1 + e^z) written so that e^z never overflows: Caffe's float exp gives inf there and a
        # rate of 0 (a decaying sigmoid, gamma < 0, reaches it some hundreds of steps past stepsize).
        z = -gamma * (it - stepsize)
        if z > 0:
            e = math.exp(-z)
            return base_lr * (e / (1.0 + e))
        return base_lr * (1.0 / (1.0 + math.exp(z)))
    raise ConfigError(f"solver: unknown lr_policy {policy!r}; expected one of {', '.join(POLICIES)}")


def check_policy(param) -> None:
    """Validate the solver fields a policy needs, at setup, with a clear message."""
    policy = param.lr_policy or "fixed"
    if policy not in POLICIES:
        raise ConfigError(f"solver: unknown lr_policy {policy!r}; expected one of {', '.join(POLICIES)}")
    if policy == "step" and param.stepsize <= 0:
        raise ConfigError("solver: lr_policy 'step' needs stepsize > 0")
    if policy == "poly" and param.max_iter <= 0:
        raise ConfigError("solver: lr_policy 'poly' needs max_iter > 0")
    if policy == "multistep":
        values = list(param.stepvalue)
        if any(b <= a for a, b in zip(values, values[1:])):
            raise ConfigError(f"solver: stepvalue must increase, got {values}")


def rate_for(param, it: int) -> float:
    """``learning_rate`` with every argument taken from a SolverParameter."""
    return learning_rate(param.lr_policy or "fixed", it, base_lr=param.base_lr, gamma=param.gamma,
                         power=param.power, stepsize=param.stepsize, stepvalues=list(param.stepvalue),
                         max_iter=param.max_iter)
