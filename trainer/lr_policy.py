"""Caffe's learning-rate policies, one pure function of the iteration.

Kept apart from the solver so each formula can be tested against Caffe's
definition on its own. ``multistep`` is the only stateful policy in Caffe (it
keeps ``current_step``, saved in the SolverState); here the step is derived from
the iteration, which gives the same value and the same ``current_step`` to save.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import numpy as np

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
                  stepsize: int = 0, stepvalues: Sequence[int] = (), max_iter: int = 0,
                  dtype: Any = np.float64) -> float:
    """The rate Caffe's ``SGDSolver::GetLearningRate`` returns at iteration ``it``.

    Computed in the net's ``dtype`` as Caffe computes it in its ``Dtype``: for float32 nets inv, poly
    and sigmoid run in float (``pow(float, float)``, ``exp(float)``), step, exp and multistep raise
    gamma to an integer power in double (C++ promotes ``pow(float, int)``) and round the product to
    float. So the rate and its ``lr =`` line are Caffe's to the last digit (LeNet's inv rate at
    iteration 600 prints 0.0095724 in Caffe; the double formula gives 0.00957239). Overflow gives
    Caffe's values (a decaying sigmoid reaches 0) instead of an exception.
    """
    f = np.float32 if np.dtype(dtype) == np.float32 else np.float64
    b, g, pw = f(base_lr), f(gamma), f(power)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if policy == "fixed":
            rate = b
        elif policy in ("step", "exp", "multistep"):
            k = it if policy == "exp" else current_step(policy, it, stepsize=stepsize, stepvalues=stepvalues)
            rate = f(np.float64(b) * np.power(np.float64(g), np.float64(k)))
        elif policy == "inv":
            rate = b * np.power(f(1) + g * f(it), -pw)
        elif policy == "poly":
            rate = b * np.power(f(1) - f(it) / f(max_iter), pw)
        elif policy == "sigmoid":
            rate = b * (f(1) / (f(1) + np.exp(-g * (f(it) - f(stepsize)))))
        else:
            raise ConfigError(f"solver: unknown lr_policy {policy!r}; expected one of {', '.join(POLICIES)}")
    return float(rate)


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


def rate_for(param, it: int, dtype: Any = np.float64) -> float:
    """``learning_rate`` with every argument taken from a SolverParameter (``dtype``: the net's)."""
    return learning_rate(param.lr_policy or "fixed", it, base_lr=param.base_lr, gamma=param.gamma,
                         power=param.power, stepsize=param.stepsize, stepvalues=list(param.stepvalue),
                         max_iter=param.max_iter, dtype=dtype)
