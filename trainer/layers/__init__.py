"""Layer registry: Caffe type strings ("Convolution", "Data", ...) to classes.

Each family lives in its own module and registers its classes with
``@register("Type")``; the first lookup imports the families, so a net can be
built from any registered type. As Caffe's LayerRegistry::AddCreator, a type
registered twice is an error naming both classes: silently replacing one would
hide a mistyped copy of a layer.
"""

from __future__ import annotations

from typing import TypeVar
from collections.abc import Callable

from datakit.errors import FormatError

from .base import Blob, Layer

_REGISTRY: dict[str, type[Layer]] = {}

L = TypeVar("L", bound=type[Layer])


def register(type_name: str) -> Callable[[L], L]:
    """Class decorator: make ``cls`` the implementation of Caffe type ``type_name``.

    Raises ValueError when another class already implements ``type_name``. The same
    class defined again by re-running its module (``importlib.reload``) replaces
    itself: that is one definition, not two.
    """
    def wrap(cls: L) -> L:
        old = _REGISTRY.get(type_name)
        if old is not None and _qualified(old) != _qualified(cls):
            raise ValueError(f"layer type {type_name!r} is already registered by {_qualified(old)}; "
                             f"{_qualified(cls)} cannot register it again (rename one of the types)")
        cls.type = type_name
        _REGISTRY[type_name] = cls
        return cls
    return wrap


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def layer_class(type_name: str, layer_name: str = "?") -> type[Layer]:
    """The class registered for ``type_name``; FormatError naming the layer otherwise."""
    _load_families()
    try:
        return _REGISTRY[type_name]
    except KeyError:
        raise FormatError(f"layer {layer_name}: unknown layer type {type_name!r}; {nearest_types(type_name)}") from None


def nearest_types(type_name: str) -> str:
    """'did you mean ...?' with the closest registered types (case-insensitive), else the whole list."""
    import difflib
    by_lower = {name.lower(): name for name in _REGISTRY}
    close = difflib.get_close_matches(type_name.lower(), list(by_lower), n=3, cutoff=0.6)
    if close:
        return "did you mean " + " or ".join(repr(by_lower[c]) for c in close) + "?"
    return "known types: " + ", ".join(sorted(_REGISTRY))


def registered_types() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


_loaded = False


def _load_families() -> None:
    """Import every layer family once (they register themselves)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from . import activation, conv, dense, inputs, loss, norm, pool  # noqa: F401
    # data layers that read files, with prefetching and transforms (Data, ImageData, HDF5Data, MemoryData)
    from . import data_db, data_hdf5, data_image, data_memory  # noqa: F401
    # the rest of Caffe's catalogue (issue 13)
    from . import (batch_ops, data_window, embed, hdf5_output, im2col_layer, losses_extra, mvn,  # noqa: F401
                   neuron_extra, recurrent, shape_ops, spp, structural)
    from . import python_layer  # noqa: F401  (type "Python": pycaffe-style layers)


__all__ = ["Blob", "Layer", "register", "layer_class", "registered_types", "nearest_types"]
