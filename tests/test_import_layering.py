"""Which package may import which: read from the source with ast, lazy imports included.

The layering the design promises: datakit/ never imports trainer/ or cli/; the layers
never import the net, solver or fit that use them; prefetch.py is a leaf, the batch
transform lives in datakit (so it knows nothing of layers); and trainer/ has no import
cycle at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_names(path: Path) -> set[str]:
    """Every module a file imports anywhere (functions too, not type-checking blocks), absolute;
    ``from a import b`` gives a and a.b."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    # `if TYPE_CHECKING:` blocks are for annotations only and never run: not an import
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def modules(package: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def offenders(files: dict[str, Path], forbidden: list[str]) -> dict[str, list[str]]:
    bad: dict[str, list[str]] = {}
    for mod, path in files.items():
        hits = sorted(n for n in imported_names(path) if any(within(n, f) for f in forbidden))
        if hits:
            bad[mod] = hits
    return bad


def test_the_helper_sees_relative_lazy_and_from_imports():
    # The checks below pass vacuously if the parser misses imports: prove it finds each form.
    assert {"trainer.layers.base_data", "datakit.threadpool.decode_pool"} <= \
        imported_names(ROOT / "trainer" / "layers" / "data_image.py")
    assert {"trainer.layers.base", "trainer.layers.base.Layer"} <= \
        imported_names(ROOT / "trainer" / "layers" / "activation.py")          # from .base import ...
    assert "trainer.layers.activation" in imported_names(ROOT / "trainer" / "layers" / "__init__.py")
    assert "trainer.net" in imported_names(ROOT / "trainer" / "fit.py")   # imported inside a function


def test_datakit_imports_neither_trainer_nor_cli():
    assert offenders(modules("datakit"), ["trainer", "cli"]) == {}


def test_trainer_imports_nothing_from_cli():
    assert offenders(modules("trainer"), ["cli"]) == {}


def test_prefetch_is_a_leaf_and_transform_knows_no_layers():
    trainer = modules("trainer")
    assert offenders({"trainer.prefetch": trainer["trainer.prefetch"]}, ["trainer"]) == {}
    # the batch transform lives in datakit (the PyTorch datasets share it), which never imports trainer
    assert "datakit.transform" in modules("datakit") and "trainer.transform" not in trainer


def test_layers_never_import_the_net_solver_or_fit():
    layers = {m: p for m, p in modules("trainer").items() if within(m, "trainer.layers")}
    assert len(layers) > 10
    assert offenders(layers, ["trainer.net", "trainer.solver", "trainer.fit"]) == {}


def test_trainer_has_no_import_cycle():
    """Lazy imports count: a cycle hidden inside a function is still a cycle of modules.

    A package and its own submodules are left out (``layers/__init__`` loads its
    families, and they import ``register`` from it): that is how a registry works.
    """
    files = modules("trainer")
    graph = {m: {n for n in imported_names(p) if n in files and n != m
                 and not within(m, n) and not within(n, m)} for m, p in files.items()}
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, " -> ".join(cycle)
