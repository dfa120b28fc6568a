"""A strict stand-in for CuPy on a machine without a GPU: NumPy underneath, CuPy's rules on top.

Why: the trainer runs one code path on NumPy and on CuPy (``xp``), and the CuPy half can only run
where a GPU is. Most bugs that show only on CuPy have nothing to do with the GPU itself: they are
CuPy refusing what NumPy silently allows (a host array mixed into device arithmetic, a NumPy call
on a device array, a device value used as a Python index). This module is an ``xp`` whose arrays
(:class:`DeviceArray`) behave like ``cupy.ndarray`` in those respects, so such bugs fail here, on a
CPU, with CuPy's exception types. :func:`installed` makes it the trainer's "cupy" (the slot
``trainer.backend`` fills when CuPy imports), so ``backend.select("gpu")``, ``to_host``,
``get_array_module`` and the kernels' RawKernel path all run as they would on a GPU.

``DeviceArray`` wraps a NumPy array instead of subclassing ``numpy.ndarray``: NumPy treats a
subclass as an array of its own and never asks it (``np.asarray``, ``np.array``, ``host[...] = x``
would all succeed silently), and ``cupy.ndarray`` is not a NumPy subclass either.

Rules enforced, as CuPy has them (``cupy/_core/core.pyx``, ``_routines_indexing.pyx``, and the
"Differences between CuPy and NumPy" and "Interoperability" pages of CuPy's user guide):

1. No implicit device-to-host conversion. ``np.asarray`` / ``np.array`` / ``np.ascontiguousarray``
   / ``np.float32(x)`` of a DeviceArray, ``host[...] = x`` and anything else that calls
   ``__array__`` raise ``TypeError("Implicit conversion to a NumPy array is not allowed...")``.
   Explicit copies are allowed: ``.get()``, :func:`asnumpy`, ``.item()``, ``.tolist()``,
   ``float()``/``int()`` of a 0-d array and ``bool()`` of a one-element array (CuPy synchronises and
   allows them; ``float()`` of an array with ndim > 0 is a TypeError since CuPy 12.3, cupy#7886).
   ``host[i] = x[()]``, one element, passes through ``float()`` here as it does with CuPy.
2. No implicit host-to-device conversion in arithmetic. Ufuncs (``xp.add``, operators, in-place
   operators, ``out=``) take DeviceArrays, Python scalars and NumPy scalars; a ``numpy.ndarray``,
   list or tuple operand raises ``TypeError("Unsupported type ...")``. CuPy's one exception is kept:
   comparisons accept a 0-d NumPy array.
3. ``x[basic index] = host_array`` raises ``ValueError("non-scalar numpy.ndarray cannot be used for
   fill")`` (CuPy routes it through ``fill``); with an advanced (array or list) index CuPy converts
   the value, and so does this module. Host arrays and lists are accepted as indices (CuPy converts
   them). ``x.fill`` takes scalars and 0-d NumPy arrays only.
4. NumPy functions called on DeviceArrays (``np.exp(x)``, ``np.sum(x)``, ``np.concatenate``) are
   dispatched here, as CuPy's ``__array_ufunc__`` / ``__array_function__`` do, and return
   DeviceArrays (this is CuPy's behaviour, not an error); a host array among their arguments
   raises ``TypeError``, and a NumPy function this module lacks raises NumPy's ``TypeError``
   ("no implementation found").
5. Reductions and integer indexing return 0-d DeviceArrays, never NumPy scalars ("Zero-dimensional
   array" in CuPy's differences page): a device sum is not a host number until converted.
6. No ``__index__`` (CuPy defines none): a device value cannot index a list or size a ``range``;
   ``bool()`` of an array of more than one element raises ``ValueError``.
7. Only names CuPy has. Module functions and array methods come from explicit lists below, each
   name checked against CuPy's reference; anything else raises ``AttributeError`` (meaning CuPy
   lacks it, or this emulator does not provide it yet: check CuPy's docs before adding it).
   ``argsort``/``sort`` take ``kind`` None or "stable" only; ``astype`` refuses ``casting``/``subok``;
   ``xp.random`` has ``random_sample``/``random``/``rand``/``seed`` and ``RandomState(seed)`` (``seed``,
   ``random_sample``) with CuPy's float32/float64 dtype.
8. RawKernel launches (``RawModule(code=...).get_function(name)(grid, block, args)``). Each
   ``__global__`` signature in the source is parsed and every argument is checked against it: a
   pointer parameter needs a DeviceArray (a host array raises ``TypeError`` as in CuPy); beyond
   CuPy, it must also be C-contiguous and of the parameter's element type, and a scalar parameter
   must have exactly its C type (CuPy passes a Python int as a 64-bit integer and a Python float as
   a double, so an ``int`` parameter needs ``np.int32``): CuPy would launch those silently and the
   kernel would read garbage. Grid and block sizes are checked against CUDA's limits. Kernel bodies
   cannot run here: a launch runs the NumPy twin from ``trainer.kernels`` on the buffers, shaped
   from the launch's own size arguments, writes the non-const buffers and leaves const ones
   read-only. ``launches`` counts the launches by kernel name.
9. The ``cupy.cuda`` calls the trainer makes (``runtime.getDeviceCount``/``getDeviceProperties``,
   ``Device(i).use()``/``.synchronize()``, ``Stream(...).use()``, ``get_current_stream()``) exist and
   do nothing; ``Device(i).use()`` for ``i != 0`` raises (one emulated device).

Not enforced, or not possible on a CPU: anything about the GPU itself (compiling the CUDA source,
kernel bodies, memory use, races, stream ordering and the memory pool's per-stream reuse,
asynchrony: every operation completes at once here); numerical results
(cuBLAS/cuRAND, float-to-int casts of out-of-range values, out-of-bounds integer indices, which
CuPy wraps around, the order of duplicate-index writes); dtype promotion and result contiguity
(NumPy's rules apply); performance, including implicit synchronisations such as ``float(x)``,
which CuPy allows; keyword arguments CuPy's functions lack, beyond those named in 7; ``xp.random``
draws from a NumPy generator, so its numbers match neither CuPy's nor the trainer's host generator.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import re
import sys
import warnings
from dataclasses import dataclass
from types import ModuleType, SimpleNamespace
from typing import Any
from collections.abc import Callable, Iterator

import numpy as np

_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. "
             "Please use `.get()` to construct a NumPy array explicitly.")
_SCALARS = (bool, int, float, complex, np.generic)


def _unsupported(x: Any) -> TypeError:
    return TypeError(f"Unsupported type {type(x)} (strict_xp: CuPy does not copy host data to the device "
                     "implicitly; use xp.asarray)")


# ------------------------------------------------------------------ arrays ----


class DeviceArray:
    """An array "on the device": a NumPy array that refuses to mix with host arrays, as cupy.ndarray does."""

    __slots__ = ("_a",)
    __array_priority__ = 100
    __hash__ = None  # type: ignore[assignment]  # arrays compare elementwise, like NumPy's and CuPy's

    def __init__(self, host: np.ndarray) -> None:
        self._a = host  # the device memory; only this module reads it

    # -- attributes cupy.ndarray has ------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    size = property(lambda self: self._a.size)
    ndim = property(lambda self: self._a.ndim)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    T = property(lambda self: DeviceArray(self._a.T))
    device = property(lambda self: cuda.Device(0))

    @property
    def flags(self) -> SimpleNamespace:
        """CuPy's flags hold only these three (no ``writeable``, ``aligned``, ...)."""
        f = self._a.flags
        return SimpleNamespace(c_contiguous=f.c_contiguous, f_contiguous=f.f_contiguous, owndata=f.owndata)

    # -- conversions -------------------------------------------------------------
    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError(_IMPLICIT)

    def get(self, stream: Any = None, order: str = "C", out: np.ndarray | None = None) -> np.ndarray:
        """A host copy (the explicit device-to-host transfer)."""
        if out is not None:
            if not isinstance(out, np.ndarray) or out.dtype != self.dtype or out.shape != self.shape:
                raise TypeError("out must be a numpy.ndarray of the same dtype and shape")
            out[...] = self._a
            return out
        return np.array(self._a, order=order, copy=True)

    def set(self, arr: np.ndarray, stream: Any = None) -> None:
        """The explicit host-to-device copy into this array."""
        if not isinstance(arr, np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if arr.dtype != self.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        if arr.shape != self.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        self._a[...] = arr

    def item(self) -> Any:
        return self._a.item()

    def tolist(self) -> Any:
        return self._a.tolist()

    def _scalar(self) -> Any:
        """The value of a 0-d array; CuPy >= 12.3 (cupy#7886), like NumPy 2.4, refuses ndim > 0."""
        if self.ndim != 0:
            raise TypeError("only 0-dimensional arrays can be converted to Python scalars")
        return self._a.item()

    def __float__(self) -> float:
        return float(self._scalar())

    def __int__(self) -> int:
        return int(self._scalar())

    def __complex__(self) -> complex:
        return complex(self._scalar())

    def __bool__(self) -> bool:
        if self.size == 0:
            warnings.warn("The truth value of an empty array is ambiguous.", DeprecationWarning, stacklevel=2)
            return False
        if self.size == 1:
            return bool(self._a.item())
        raise ValueError("The truth value of an array with more than one element is ambiguous. "
                         "Use a.any() or a.all()")

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __iter__(self) -> Iterator[DeviceArray]:
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    def __repr__(self) -> str:
        return f"DeviceArray({self._a!r})"

    def __str__(self) -> str:
        return str(self._a)

    def __format__(self, spec: str) -> str:
        return format(self._a, spec)

    # -- indexing ----------------------------------------------------------------
    def __getitem__(self, key: Any) -> DeviceArray:
        k = _index(key)
        r = self._a[k]
        if not isinstance(r, np.ndarray):  # integers only: CuPy returns a 0-d view, not a scalar
            r = self._a[(k if isinstance(k, tuple) else (k,)) + (Ellipsis,)]
        return DeviceArray(r)

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(value, DeviceArray):
            v: Any = value._a
        elif isinstance(value, _SCALARS):
            v = value
        elif _is_advanced(key) and isinstance(value, (np.ndarray, list, tuple)):
            v = value  # CuPy copies the values of an advanced-index assignment to the device
        elif isinstance(value, np.ndarray) and value.ndim == 0:
            v = value.item()
        elif isinstance(value, np.ndarray):
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill (strict_xp: CuPy does not "
                             "copy a host array into a device array implicitly; use xp.asarray)")
        else:
            raise _unsupported(value)
        self._a[_index(key)] = v

    def fill(self, value: Any) -> None:
        if isinstance(value, np.ndarray):
            if value.shape != ():
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            value = value.item()
        elif not isinstance(value, _SCALARS):
            raise _unsupported(value)
        self._a.fill(value)

    # -- NumPy's protocols: what CuPy's __array_ufunc__ / __array_function__ do ----
    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        fn = _UFUNCS.get(ufunc.__name__)
        if method != "__call__" or fn is None:
            return NotImplemented
        if "out" in kwargs:
            (kwargs["out"],) = kwargs["out"]
        if ufunc.__name__ in _COMPARISONS:  # CuPy's workaround: a 0-d host array compares as its value
            inputs = tuple(x.item() if isinstance(x, np.ndarray) and x.ndim == 0 else x for x in inputs)
        return fn(*inputs, **kwargs)

    def __array_function__(self, func: Callable, types: Any, args: Any, kwargs: Any) -> Any:
        fn = _FUNCTIONS.get(func.__name__) if func.__module__ == "numpy" else None
        if fn is None:
            return NotImplemented
        return fn(*args, **kwargs)

    # -- methods cupy.ndarray has --------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name not in _METHODS:
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r} (strict_xp: CuPy lacks it, "
                                 "or this emulator does not provide it; check CuPy's ndarray reference)")
        check = _METHODS[name]
        bound = getattr(self._a, name)

        def method(*args: Any, **kwargs: Any) -> Any:
            if check is not None:
                check(kwargs)
            if name == "take":
                args, kwargs = _take_args(args, kwargs, 0)
            return _wrap(bound(*_host_args(args, name), **_host_args(kwargs, name)))
        return method


def _binary(ufunc: str) -> tuple[Callable, Callable, Callable]:
    """The forward, reflected and in-place operator of a ufunc (CuPy's __add__, __radd__, __iadd__)."""
    def op(self: DeviceArray, other: Any) -> Any:
        return _UFUNCS[ufunc](self, other)

    def rop(self: DeviceArray, other: Any) -> Any:
        return _UFUNCS[ufunc](other, self)

    def iop(self: DeviceArray, other: Any) -> Any:
        return _UFUNCS[ufunc](self, other, out=self)
    return op, rop, iop


for _op, _uf in [("add", "add"), ("sub", "subtract"), ("mul", "multiply"), ("truediv", "true_divide"),
                 ("floordiv", "floor_divide"), ("mod", "remainder"), ("pow", "power"), ("and", "bitwise_and"),
                 ("or", "bitwise_or"), ("xor", "bitwise_xor"), ("lshift", "left_shift"),
                 ("rshift", "right_shift"), ("matmul", "matmul")]:
    _f, _r, _i = _binary(_uf)
    setattr(DeviceArray, f"__{_op}__", _f)
    setattr(DeviceArray, f"__r{_op}__", _r)
    setattr(DeviceArray, f"__i{_op}__", _i)
for _op, _uf in [("lt", "less"), ("le", "less_equal"), ("eq", "equal"), ("ne", "not_equal"),
                 ("gt", "greater"), ("ge", "greater_equal")]:
    setattr(DeviceArray, f"__{_op}__", lambda self, other, _uf=_uf: _UFUNCS[_uf](
        self, other.item() if isinstance(other, np.ndarray) and other.ndim == 0 else other))
for _op, _uf in [("neg", "negative"), ("abs", "absolute"), ("invert", "invert")]:
    setattr(DeviceArray, f"__{_op}__", lambda self, _uf=_uf: _UFUNCS[_uf](self))
DeviceArray.__pos__ = lambda self: self  # type: ignore[attr-defined]

ndarray = DeviceArray


def _index(key: Any) -> Any:
    """An index for the wrapped array: device index arrays unwrapped; host ones kept (CuPy converts them)."""
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    return key._a if isinstance(key, DeviceArray) else key


def _is_advanced(key: Any) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (DeviceArray, np.ndarray, list)) for k in keys)


def _host_args(args: Any, where: str) -> Any:
    """Unwrap DeviceArrays in (nested) arguments; a host array among them is CuPy's TypeError.

    ``take``'s indices are the exception: CuPy converts host indices (``_take``: ``core.array(indices)``).
    """
    if isinstance(args, DeviceArray):
        return args._a
    if isinstance(args, np.ndarray):
        raise TypeError(f"{where}: {_unsupported(args)}")
    if isinstance(args, (list, tuple)):
        return type(args)(_host_args(a, where) for a in args)
    if isinstance(args, dict):
        return {k: _index(v) if (where == "take" and k == "indices") else _host_args(v, where)
                for k, v in args.items()}
    return args


def _take_args(args: tuple, kwargs: dict, first: int) -> tuple[tuple, dict]:
    """``take``'s positional indices (after ``first`` array arguments) named, so _host_args lets them through."""
    if len(args) > first and "indices" not in kwargs:
        kwargs = {**kwargs, "indices": args[first]}
        args = args[:first] + args[first + 1:]
    return args, kwargs


def _wrap(r: Any) -> Any:
    """Results stay on the device: arrays and NumPy scalars become DeviceArrays (0-d for scalars)."""
    if isinstance(r, np.ndarray):
        return DeviceArray(r)
    if isinstance(r, np.generic):
        return DeviceArray(np.asarray(r))
    if isinstance(r, (tuple, list)):
        return type(r)(_wrap(x) for x in r)
    return r


# --------------------------------------------------------------- functions ----

_COMPARISONS = {"less", "less_equal", "equal", "not_equal", "greater", "greater_equal"}
# Ufuncs CuPy has under the same names (cupy.<name>, docs "Universal functions (cupy.ufunc)").
_UFUNC_NAMES = ["add", "subtract", "multiply", "divide", "true_divide", "floor_divide", "remainder", "power",
                "negative", "absolute", "sign", "exp", "frexp", "log", "log1p", "expm1", "sqrt", "square", "tanh",
                "maximum", "minimum", "fmax", "fmin", "floor", "ceil", "rint", "isfinite", "isnan", "isinf",
                "logical_and", "logical_or", "logical_not", "logical_xor", "bitwise_and", "bitwise_or",
                "bitwise_xor", "invert", "left_shift", "right_shift", "matmul", *sorted(_COMPARISONS)]


def _ufunc(name: str) -> Callable:
    np_ufunc = getattr(np, name)

    def ufunc(*inputs: Any, out: DeviceArray | None = None, **kwargs: Any) -> Any:
        host = []
        for x in inputs:
            if isinstance(x, DeviceArray):
                host.append(x._a)
            elif isinstance(x, _SCALARS):
                host.append(x)
            else:
                raise _unsupported(x)
        if out is None:
            return _wrap(np_ufunc(*host, **kwargs))
        if not isinstance(out, DeviceArray):
            raise _unsupported(out)
        np_ufunc(*host, out=out._a, **kwargs)
        return out
    ufunc.__name__ = name
    return ufunc


_UFUNCS: dict[str, Callable] = {name: _ufunc(name) for name in _UFUNC_NAMES}


def _function(name: str, check: Callable[[dict], None] | None = None) -> Callable:
    """A NumPy function on device arguments: every array argument must be a DeviceArray."""
    np_fn = getattr(np, name)

    def fn(*args: Any, **kwargs: Any) -> Any:
        if check is not None:
            check(kwargs)
        if name == "take":
            args, kwargs = _take_args(args, kwargs, 1)
        out = kwargs.get("out")
        result = np_fn(*_host_args(args, name), **_host_args(kwargs, name))
        return out if isinstance(out, DeviceArray) else _wrap(result)
    fn.__name__ = name
    return fn


def _stable_only(kwargs: dict) -> None:
    """CuPy's sort/argsort: "kind: Default is None, which is equivalent to 'stable'; no other options"."""
    if kwargs.get("kind") not in (None, "stable"):
        raise ValueError(f"kind={kwargs['kind']!r}: CuPy sorts stably only (kind None or 'stable')")


def _astype_args(kwargs: dict) -> None:
    for unsupported in ("casting", "subok"):
        if kwargs.get(unsupported) is not None:
            raise TypeError(f"{unsupported} is not supported yet")


# Module functions CuPy has (cupy.<name>), argument checks where CuPy is narrower than NumPy.
_FUNCTION_NAMES: dict[str, Callable[[dict], None] | None] = {
    name: None for name in [
        "concatenate", "stack", "hstack", "vstack", "where", "take", "take_along_axis", "sum", "mean", "var",
        "std", "prod", "cumsum", "max", "amax", "min", "amin", "argmax", "argmin", "any", "all", "clip",
        "transpose", "reshape", "ravel", "squeeze", "expand_dims", "broadcast_to", "swapaxes", "moveaxis",
        "tile", "repeat", "flip", "dot", "tensordot", "outer", "einsum", "count_nonzero", "nonzero",
        "flatnonzero", "zeros_like", "ones_like", "empty_like", "full_like"]}
_FUNCTION_NAMES.update({"argsort": _stable_only, "sort": _stable_only})
_FUNCTIONS: dict[str, Callable] = {**{n: _function(n, c) for n, c in _FUNCTION_NAMES.items()}, **_UFUNCS,
                                   "abs": _UFUNCS["absolute"]}
# (served by the module __getattr__ at the end: as globals, sum/min/max/any/all would shadow the builtins here)

# Array methods cupy.ndarray has (core.pyx), with CuPy's narrower arguments.
_METHODS: dict[str, Callable[[dict], None] | None] = {
    name: None for name in [
        "copy", "view", "reshape", "transpose", "swapaxes", "flatten", "ravel", "squeeze", "take", "repeat",
        "nonzero", "diagonal", "max", "argmax", "min", "argmin", "ptp", "clip", "round", "trace", "sum",
        "cumsum", "mean", "var", "std", "prod", "cumprod", "all", "any", "conj", "dot"]}
_METHODS.update({"astype": _astype_args, "argsort": _stable_only, "sort": _stable_only})


def _new(np_fn: Callable) -> Callable:
    """An array constructor that allocates on the device (no array arguments to check)."""
    def make(*args: Any, **kwargs: Any) -> DeviceArray:
        return DeviceArray(np.asarray(np_fn(*args, **kwargs)))
    make.__name__ = np_fn.__name__
    return make


empty, zeros, ones, full, arange, linspace, eye = (_new(f) for f in (np.empty, np.zeros, np.ones, np.full,
                                                                    np.arange, np.linspace, np.eye))


def asarray(a: Any, dtype: Any = None, order: Any = None) -> DeviceArray:
    """The explicit host-to-device copy (or ``a`` itself when it is already a device array of ``dtype``)."""
    if isinstance(a, DeviceArray):
        if dtype is None or np.dtype(dtype) == a.dtype:
            return a
        return DeviceArray(a._a.astype(dtype))
    # A (nested) list may hold device arrays (CuPy stacks them); a host array inside it is refused.
    return DeviceArray(np.array(_host_args(a, "asarray") if isinstance(a, (list, tuple)) else a,
                                dtype=dtype, order=order or "K", copy=True))


def array(obj: Any, dtype: Any = None, copy: bool = True, order: str = "K") -> DeviceArray:
    if isinstance(obj, DeviceArray):
        return DeviceArray(np.array(obj._a, dtype=dtype, copy=True, order=order)) if copy else asarray(obj, dtype)
    return asarray(obj, dtype, order)


asanyarray = asarray


def ascontiguousarray(a: DeviceArray, dtype: Any = None) -> DeviceArray:
    """CuPy's takes a cupy.ndarray only (``_core.ascontiguousarray(ndarray a, ...)``): no host input."""
    if not isinstance(a, DeviceArray):
        raise _unsupported(a)
    if a._a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    return DeviceArray(np.ascontiguousarray(a._a, dtype=dtype))


def asnumpy(a: Any, stream: Any = None, order: str = "C", out: np.ndarray | None = None) -> np.ndarray:
    """The explicit device-to-host copy; host inputs come back as they are (cupy.asnumpy)."""
    if isinstance(a, DeviceArray):
        return a.get(order=order, out=out)
    return np.asarray(a, order=order)


def get_array_module(*args: Any) -> ModuleType:
    return _THIS if any(isinstance(a, DeviceArray) for a in args) else np


dtype = np.dtype
(bool_, int8, int16, int32, int64, uint8, uint16, uint32, uint64, float16, float32, float64, complex64,
 complex128) = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
                np.float16, np.float32, np.float64, np.complex64, np.complex128)
newaxis, inf, nan, pi, e = None, np.inf, np.nan, np.pi, np.e


# ------------------------------------------------------------------ random ----

_rng = np.random.default_rng(0)


def _random_sample(size: Any = None, dtype: Any = float) -> DeviceArray:
    """cupy.random.random_sample: "Only numpy.float32 and numpy.float64 types are allowed"."""
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"cupy.random supports float32 and float64 only, not {dt}")
    return DeviceArray(np.asarray(_rng.random(size, dtype=dt)))


def _seed(seed: int | None = None) -> None:
    global _rng
    _rng = np.random.default_rng(seed)


class _RandomState:
    """cupy.random.RandomState(seed): seed() and random_sample() with CuPy's float32/float64-only dtype."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed(seed)

    def seed(self, seed: int | None = None) -> None:
        if seed is not None and not 0 <= int(seed) < 1 << 64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        self._rng = np.random.default_rng(seed)

    def random_sample(self, size: Any = None, dtype: Any = float) -> DeviceArray:
        dt = np.dtype(dtype)
        if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"cupy.random supports float32 and float64 only, not {dt}")
        return DeviceArray(np.asarray(self._rng.random(size, dtype=dt)))


random = SimpleNamespace(random_sample=_random_sample, random=_random_sample, seed=_seed,
                         rand=lambda *size, dtype=float: _random_sample(size, dtype), RandomState=_RandomState)


# -------------------------------------------------------------------- cuda ----


class _Device:
    """cupy.cuda.Device for the one emulated device (id 0)."""

    def __init__(self, device: int | None = None) -> None:
        self.id = 0 if device is None else int(device)

    def use(self) -> None:
        if self.id != 0:
            raise RuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {self.id} (strict_xp emulates one)")

    def synchronize(self) -> None:
        pass

    def __enter__(self) -> _Device:
        self.use()
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class _Stream:
    """cupy.cuda.Stream: every operation here is already complete, so streams only need to exist."""

    def __init__(self, null: bool = False, non_blocking: bool = False, ptds: bool = False) -> None:
        self.non_blocking = non_blocking

    def use(self) -> _Stream:
        return self

    def synchronize(self) -> None:
        pass

    def record(self, event: Any = None) -> SimpleNamespace:
        """cupy.cuda.Stream.record: an Event; here every queued operation is already done."""
        return SimpleNamespace(done=True, synchronize=lambda: None)

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


cuda = SimpleNamespace(
    Device=_Device, Stream=_Stream, get_current_stream=lambda: _Stream(),
    runtime=SimpleNamespace(getDeviceCount=lambda: 1,
                            getDeviceProperties=lambda i: {"name": b"strict_xp (NumPy emulating CuPy)"}))


# ------------------------------------------------------------- RawKernels ----

_C_TYPES = {"int": np.dtype(np.int32), "long long": np.dtype(np.int64), "float": np.dtype(np.float32),
            "double": np.dtype(np.float64), "bool": np.dtype(np.bool_)}
launches: collections.Counter[str] = collections.Counter()


@dataclass(frozen=True)
class _Param:
    name: str
    dtype: np.dtype
    pointer: bool
    const: bool


def _parse_params(text: str, types: dict[str, np.dtype]) -> list[_Param]:
    params = []
    for p in text.split(","):
        tokens = p.replace("*", " * ").split()
        base = " ".join(t for t in tokens[:-1] if t not in ("const", "*"))
        params.append(_Param(tokens[-1], types[base], "*" in tokens, "const" in tokens))
    return params


class RawModule:
    """cupy.RawModule: reads each ``__global__`` function's parameters from the source (``typedef ... T;`` too)."""

    def __init__(self, code: str, options: tuple = (), **kwargs: Any) -> None:
        types = dict(_C_TYPES)
        for ctype, alias in re.findall(r"typedef\s+([\w ]+?)\s+(\w+)\s*;", code):
            types[alias] = _C_TYPES[ctype]
        self._kernels = {name: _parse_params(params, types)
                         for name, params in re.findall(r"__global__\s+void\s+(\w+)\s*\(([^)]*)\)", code)}

    def get_function(self, name: str) -> RawKernel:
        if name not in self._kernels:
            raise RuntimeError(f"CUDA_ERROR_NOT_FOUND: named symbol not found: {name!r}")
        return RawKernel(name, self._kernels[name])


def _scalar_dtype(value: Any) -> np.dtype:
    """The C type CuPy passes a scalar argument as (Python int: 64-bit, Python float: double)."""
    if isinstance(value, np.generic):
        return value.dtype
    if isinstance(value, bool):
        return np.dtype(np.bool_)
    if isinstance(value, int):
        return np.dtype(np.int64)
    if isinstance(value, float):
        return np.dtype(np.float64)
    raise _unsupported(value)


def _check_launch_dims(what: str, dims: Any, limits: tuple[int, int, int], total: int | None) -> None:
    if not isinstance(dims, tuple) or not 1 <= len(dims) <= 3:
        raise TypeError(f"{what} must be a tuple of 1 to 3 ints, got {dims!r}")
    for d, lim in zip(dims, limits):
        if not isinstance(d, (int, np.integer)) or not 1 <= d <= lim:
            raise ValueError(f"{what} {dims!r}: each size must be an int in 1..{lim}")
    if total is not None and int(np.prod(dims)) > total:
        raise ValueError(f"{what} {dims!r}: more than {total} threads in a block")


class RawKernel:
    """A kernel whose launch is checked against its CUDA signature, then run by its NumPy twin."""

    def __init__(self, name: str, params: list[_Param]) -> None:
        self.name = name
        self.params = params

    def __call__(self, grid: tuple, block: tuple, args: tuple, *, shared_mem: int = 0, **kwargs: Any) -> None:
        _check_launch_dims("grid", grid, (2**31 - 1, 65535, 65535), None)
        _check_launch_dims("block", block, (1024, 1024, 64), 1024)
        if len(args) != len(self.params):
            raise TypeError(f"kernel {self.name} takes {len(self.params)} arguments, got {len(args)}")
        bufs: dict[str, Any] = {}
        for p, a in zip(self.params, args):
            where = f"kernel {self.name} argument {p.name}"
            if p.pointer:
                if not isinstance(a, DeviceArray):
                    raise TypeError(f"{where}: {_unsupported(a)}")
                if a.dtype != p.dtype or not a._a.flags.c_contiguous:
                    raise TypeError(f"{where}: the kernel reads a C-contiguous {p.dtype} buffer, got a "
                                    f"{'' if a._a.flags.c_contiguous else 'strided '}{a.dtype} array "
                                    "(CuPy would launch it and the kernel would misread the memory)")
                flat = a._a.reshape(-1)
                if p.const:
                    flat = flat.view()
                    flat.flags.writeable = False
                bufs[p.name] = flat
            else:
                got = _scalar_dtype(a)
                if got != p.dtype:
                    raise TypeError(f"{where}: the parameter is {p.dtype} but CuPy would pass {got} "
                                    f"({type(a).__name__}); give {p.dtype.name}(value)")
                bufs[p.name] = a.item() if isinstance(a, np.generic) else a
        twin = _twins().get(self.name)
        if twin is None:
            raise NotImplementedError(f"strict_xp has no NumPy twin for kernel {self.name!r}")
        launches[self.name] += 1
        twin(bufs)


@functools.cache
def _twins() -> dict[str, Callable[[dict[str, Any]], None]]:
    """trainer.kernels_cuda's kernels by name, each run by the trainer.kernels NumPy twin.

    Buffers are flat, as the kernel sees them, and are shaped here from the launch's size
    arguments only, so a launch whose sizes disagree with its buffers fails.
    """
    from trainer import kernels as k

    def geometry(p: dict) -> tuple:
        return p["kh"], p["kw"], p["ph"], p["pw"], p["sh"], p["sw"]

    def im2col(p: dict) -> None:
        n = p["total"] // (p["C"] * p["kh"] * p["kw"] * p["oh"] * p["ow"])
        x = p["x"].reshape(n, p["C"], p["H"], p["W"])
        p["col"][...] = k.im2col(x, *geometry(p), p["dh"], p["dw"]).reshape(-1)

    def col2im(p: dict) -> None:
        shape = (p["total"] // (p["C"] * p["H"] * p["W"]), p["C"], p["H"], p["W"])
        p["x"][...] = k.col2im(p["col"], shape, *geometry(p), p["dh"], p["dw"]).reshape(-1)

    def planes(p: dict, buf: str, h: str, w: str) -> np.ndarray:
        return p[buf].reshape(-1, 1, p[h], p[w])

    def max_pool_fwd(p: dict) -> None:
        y, arg = k.max_pool_forward(planes(p, "x", "H", "W"), *geometry(p), p["oh"], p["ow"])
        p["y"][...], p["arg"][...] = y.reshape(-1), arg.reshape(-1)

    def max_pool_bwd(p: dict) -> None:
        dy = planes(p, "dy", "oh", "ow")
        dx = k.max_pool_backward(dy, planes(p, "arg", "oh", "ow"), (dy.shape[0], 1, p["H"], p["W"]), *geometry(p))
        p["dx"][...] = dx.reshape(-1)

    def ave_pool_fwd(p: dict) -> None:
        p["y"][...] = k.ave_pool_forward(planes(p, "x", "H", "W"), *geometry(p), p["oh"], p["ow"]).reshape(-1)

    def ave_pool_bwd(p: dict) -> None:
        dy = planes(p, "dy", "oh", "ow")
        p["dx"][...] = k.ave_pool_backward(dy, (dy.shape[0], 1, p["H"], p["W"]), *geometry(p)).reshape(-1)

    def channels(p: dict, buf: str) -> np.ndarray:
        return p[buf].reshape(-1, p["C"], p["HW"], 1)

    def lrn_fwd(p: dict) -> None:
        y, scale = k.lrn_across_forward(channels(p, "x"), p["size"], p["alpha_over_size"] * p["size"],
                                        p["beta"], p["k"])
        p["y"][...], p["scale"][...] = y.reshape(-1), scale.reshape(-1)

    def lrn_bwd(p: dict) -> None:
        alpha = p["coeff"] * p["size"] / (2.0 * p["beta"]) if p["beta"] else 0.0  # coeff = 2·alpha·beta/size
        dx = k.lrn_across_backward(channels(p, "x"), channels(p, "y"), channels(p, "scale"), channels(p, "dy"),
                                   p["size"], alpha, p["beta"])
        p["dx"][...] = dx.reshape(-1)

    return {f.__name__: f for f in (im2col, col2im, max_pool_fwd, max_pool_bwd, ave_pool_fwd, ave_pool_bwd,
                                    lrn_fwd, lrn_bwd)}


# ----------------------------------------------------------------- install ----

_THIS = sys.modules[__name__]


@contextlib.contextmanager
def installed() -> Iterator[ModuleType]:
    """Make this module the trainer's CuPy while the block runs, as if CuPy had imported with a device.

    ``trainer.backend`` keeps the cupy module it found in ``_cupy``; every device decision reads it
    (``select``, ``get_array_module``, ``to_host``, ``cupy_module`` behind the RawKernels), so filling
    that slot is the whole installation: no production code knows about this module. The compiled
    kernel cache is emptied on both sides so no module built for another "cupy" is reused.
    """
    from trainer import backend, kernels_cuda
    saved = backend._cupy, backend._cupy_checked, backend._cupy_reason
    backend._cupy, backend._cupy_checked, backend._cupy_reason = _THIS, True, ""
    kernels_cuda._module.cache_clear()
    try:
        yield _THIS
    finally:
        backend._cupy, backend._cupy_checked, backend._cupy_reason = saved
        kernels_cuda._module.cache_clear()


def __getattr__(name: str) -> Any:
    """The device functions; other names, which CuPy lacks or this emulator does not provide, are AttributeErrors."""
    if name in _FUNCTIONS:
        return _FUNCTIONS[name]
    raise AttributeError(f"module 'cupy' has no attribute {name!r} (strict_xp: CuPy lacks it, or this emulator "
                         "does not provide it; check CuPy's API reference before adding it)")
