"""Lazy public names for a package: ``datakit.convert(...)`` without importing numpy at ``import datakit``.

A package lists its public calls as ``name -> "module:attribute"``; :func:`install` makes
each one resolve on first use (PEP 562 style), so ``import datakit`` stays light.

The twist is that several calls share their name with a submodule (``datakit.convert``
is both the stage and the ``datakit/convert/`` package), and importing a submodule normally
rebinds the package attribute to the module. For those names the package attribute is a
:class:`Stage`: calling it calls the API function; every other attribute access
(``datakit.convert.ConvertOptions``), assignment and deletion (``monkeypatch``) goes
to the submodule itself, imported on first use. Code that imports the submodule
(``from datakit.convert import ConvertOptions``) gets the real module as before.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from typing import Any

__all__ = ["Stage", "install"]


def _resolve(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


class Stage:
    """A public call that is also the module of the same name (calls go to the function)."""

    __slots__ = ("_module_name", "_target", "_func")

    def __init__(self, module_name: str, target: str) -> None:
        object.__setattr__(self, "_module_name", module_name)
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_func", None)

    def _function(self) -> Callable[..., Any]:
        if self._func is None:
            object.__setattr__(self, "_func", _resolve(self._target))
        return self._func

    def _module(self) -> types.ModuleType:
        return importlib.import_module(self._module_name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._function()(*args, **kwargs)

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return self._function().__doc__

    @property
    def __wrapped__(self) -> Callable[..., Any]:   # inspect.signature / help() follow it
        return self._function()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._module(), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._module(), name)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._module())) | {"__call__"})

    def __repr__(self) -> str:
        return f"<datakit stage {self._target} (module {self._module_name})>"


def install(package: str, api: dict[str, str]) -> None:
    """Make ``package.NAME`` resolve ``api[NAME]`` (``"module:attribute"``) lazily.

    Names that are also submodules of `package` become :class:`Stage` objects that
    survive the submodule's import; the others are resolved once by ``__getattr__``.
    """
    mod = sys.modules[package]
    stages = {name: target for name, target in api.items() if _is_submodule(package, name)}
    plain = {name: target for name, target in api.items() if name not in stages}

    class _Package(types.ModuleType):
        pass

    for name, target in stages.items():
        stage = Stage(f"{package}.{name}", target)

        def get(self, _stage: Stage = stage) -> Stage:
            return _stage

        def set_(self, value: Any, _name: str = name) -> None:
            # the import system binds the submodule here after importing it: keep the Stage
            if not isinstance(value, types.ModuleType) or value.__name__ != f"{package}.{_name}":
                raise AttributeError(f"{package}.{_name} is a public function; it cannot be replaced")

        setattr(_Package, name, property(get, set_))

    def __getattr__(name: str) -> Any:
        if name in plain:
            value = _resolve(plain[name])
            mod.__dict__[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(mod.__dict__) | set(api))

    mod.__getattr__ = __getattr__  # type: ignore[method-assign]  # PEP 562: a module's own attribute hook
    mod.__dir__ = __dir__  # type: ignore[method-assign]
    for name in stages:
        mod.__dict__.pop(name, None)
    mod.__class__ = _Package


def _is_submodule(package: str, name: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(f"{package}.{name}") is not None
    except (ImportError, ValueError):
        return False
