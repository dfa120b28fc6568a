"""Caffe's Python layer: ``type: "Python"`` runs a class written against pycaffe's interface.

``python_param { module: "m" layer: "C" param_str: "..." }``: module ``m`` is imported from
``PYTHONPATH`` (``sys.path``) or, failing that, from the folder of the prototxt the net was read
from; class ``C`` is instantiated and driven as Caffe's PythonLayer drives it: ``param_str`` and
``phase`` set, then ``setup(bottom, top)`` once, ``reshape`` before every ``forward``, and
``backward(top, propagate_down, bottom)``. Blobs expose NumPy ``data``/``diff`` (see
trainer.pycaffe); learnable blobs the layer adds with ``self.blobs.add_blob`` are the layer's
params, so solvers update them (lr_mult as any layer), snapshots save them and resume and
``--weights`` load them. ``share_in_parallel`` is accepted (one process here). A failure in
the layer's code names the module, class and method, and where in the layer's file it happened.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datakit.errors import ConfigError, DatakitError

from trainer import pycaffe

from . import register
from .base import Blob, Layer


class PythonLayerError(DatakitError):
    """A Python layer's own code raised."""


def import_layer_class(module: str, name: str, folders: list[str]) -> type:
    """``module.name``, importing the module from sys.path, then from ``folders``."""
    pycaffe.install()
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module.split(".")[0]:
            raise ConfigError(f"python_param.module {module!r}: importing it failed: {err}") from None
        missing = [f for f in folders if f not in sys.path]
        if not missing:
            raise ConfigError(f"python_param.module {module!r}: no such module on PYTHONPATH"
                              + (f" or in {', '.join(folders)}" if folders else "")) from None
        sys.path.extend(missing)  # kept: the module may import its siblings later
        importlib.invalidate_caches()
        return import_layer_class(module, name, [])
    except Exception as err:
        where = _user_frame(err)
        raise ConfigError(f"python_param.module {module!r}: importing it failed{where}: "
                          f"{type(err).__name__}: {err}") from None
    cls = getattr(mod, name, None)
    if not isinstance(cls, type):
        raise ConfigError(f"python_param.layer {name!r}: module {module!r} ({getattr(mod, '__file__', '?')}) "
                          "has no such class")
    return cls


def _user_frame(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


@register("Python")
class PythonLayer(Layer):
    """Any number of bottoms and tops, as the Python class decides."""

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.python_param
        if not p.module or not p.layer:
            raise self.error("python_param needs module and layer")
        self.label = f"{p.module}.{p.layer}"
        folders = [str(Path(self.prototxt).resolve().parent)] if self.prototxt else []
        cls = import_layer_class(p.module, p.layer, folders)
        self.py = self._call("__init__", lambda: cls(self.param))
        self.py.param_str = p.param_str
        self.py.phase = self.phase
        self.py.blobs = self.vec = pycaffe.BlobVec(self)
        self._run("setup", bottoms, tops, lambda b, t: self.py.setup(b, t))

    def _call(self, method: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except DatakitError:
            raise
        except Exception as err:
            raise PythonLayerError(f"layer {self.name} (Python {self.label}): {self.label}.{method} failed"
                                   f"{_user_frame(err)}: {type(err).__name__}: {err}") from err

    def _run(self, method: str, first: list[Blob], second: list[Blob], fn: Callable[[Any, Any], Any]) -> None:
        """Call the user's ``method`` on pycaffe views of the blobs, then copy host edits back."""
        a, b = [pycaffe.Blob(x) for x in first], [pycaffe.Blob(x) for x in second]
        try:
            self._call(method, lambda: fn(a, b))
        finally:
            for view in a + b:
                view.flush()
            self.vec.flush()

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        self._run("reshape", bottoms, tops, lambda b, t: self.py.reshape(b, t))

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        self._run("forward", bottoms, tops, lambda b, t: self.py.forward(b, t))

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        for b, down in zip(bottoms, propagate_down):
            if down and not any(b is t for t in tops):
                b.diff = self.xp.zeros(b.shape, dtype=self.dtype)  # fresh: never an alias of another blob's
        for blob in self.blobs:
            blob.diff  # noqa: B018  (allocated, so in-place `+=` into a param diff works)
        self._run("backward", tops, bottoms, lambda t, b: self.py.backward(t, list(propagate_down), b))
        for blob in self.blobs:
            blob.diff_zero = False  # the layer may have written its param diffs in place
