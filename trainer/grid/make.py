"""`trainer grid make`: a whole transfer study written as net folders (see trainer.grid.layout).

For each split s and each half X used, a base net ``half<s><X>`` trained on half X; then for every
n and every (source, target) pair, ``transfer<s><X><s><Y>_1_<n>`` (frozen: BnB when X = Y, AnB
otherwise) and ``transfer-ft...`` (fine-tuned: BnB+, AnB+), each copying the first n learnable
layers from the final snapshot of ``half<s><X>``. Optional families: the natural / man-made split
(split name ``natman``), random frozen layers (``nolearn<s><Y>_1_<n>``, no weights copied), and
reduced-volume nets (``reduced-<NNNN>``). Data paths come from templates with ``{split}``,
``{half}``, ``{phase}`` (train / test) and ``{per_class}``; they are written relative to each net's
folder, so a grid moves with its data. Every net folder holds the exact command that trains it.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shlex
import string
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from datakit.errors import ConfigError
from datakit.formats.prototxt import read_net, read_solver, write_prototxt
from trainer.grid.layout import (GRID_FILE, GRID_FORMAT, LOG_FILE, SNAPSHOT_PREFIX, NetSpec, fit_arguments,
                                 write_json, write_net_spec)
from trainer.grid.names import base_name, transfer_name
from trainer.transfer import TransferSpec, learnable_layers, transfer_net

NET_PROTOTXT = "train_val.prototxt"
SOLVER_PROTOTXT = "solver.prototxt"
TRANSFER_FAMILIES = ("BnB", "BnB+", "AnB", "AnB+")


@dataclass
class GridPlan:
    """What `grid make` builds. `data` / `mean` / `reduced_data` / `reduced_mean` are path templates (see
    module doc). The reduced-volume nets read `reduced_mean`, or `mean` when that has no {split} / {half}
    (those nets train on every class: they have neither)."""

    net: str
    solver: str
    data: str
    mean: str | None = None
    splits: list[str] = field(default_factory=lambda: ["0"])
    pairs: list[str] = field(default_factory=lambda: ["AA", "BB", "AB", "BA"])
    layers: list[int] | None = None            # default 1 .. learnable layers - 1
    families: list[str] = field(default_factory=lambda: list(TRANSFER_FAMILIES))
    natman: bool = False
    random_frozen: bool = False
    reduced: list[int] = field(default_factory=list)
    reduced_data: str | None = None
    reduced_mean: str | None = None
    max_iter: int | None = None
    num_output: dict[str, int] = field(default_factory=dict)   # half -> classes; "" for every half
    data_later: bool = False   # data paths that do not exist yet are a warning, not a refusal (see check_data)


def _fill(template: str, **values) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError) as err:
        raise ConfigError(f"path template {template!r}: unknown placeholder {err} "
                          "(known: {split}, {half}, {phase}, {per_class})") from None


def _placeholders(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:  # an unmatched brace
        raise ConfigError(f"path template {template!r}: {err}") from None


def _require(option: str, template: str, needed: dict[str, str]) -> None:
    """Refuse a template missing a placeholder whose absence would give two nets the same data."""
    have = _placeholders(template)
    for name, why in needed.items():
        if name not in have:
            raise ConfigError(f"{option} {template!r} has no {{{name}}}: {why}")


_SPLIT_NAME = re.compile(r"^[0-9]+$")


def check_plan(plan: GridPlan) -> None:
    """Refuse, before any folder is written, a plan whose nets would be misnamed or would silently read
    the wrong data: a data template without {phase} tests each net on its training data, one without
    {half} trains both halves on the same classes, one without {split} gives every split the same data."""
    unknown = sorted(set(plan.families) - set(TRANSFER_FAMILIES))
    if unknown:
        raise ConfigError(f"--families: unknown {', '.join(unknown)} (known: {', '.join(TRANSFER_FAMILIES)})")
    for pair in plan.pairs:
        if len(pair) != 2 or set(pair) - {"A", "B"}:
            raise ConfigError(f"--pairs: {pair!r} is not two halves (AA, AB, BA or BB)")
    for split in plan.splits:
        if split == "natman":
            raise ConfigError("--splits: 'natman' is not a random split; give --natman for the natural / man-made one")
        if not _SPLIT_NAME.match(split):
            raise ConfigError(f"--splits: {split!r} is not a split name: digits only (the seed of "
                              "`datakit split --seed`), since it goes into folder names such as half<split>A")
    halves = {h for pair in plan.pairs for h in pair}
    bad = sorted(k for k in plan.num_output if k not in halves | {""})
    if bad:
        raise ConfigError(f"--num-output: no half {bad[0]!r} in this grid (its halves: "
                          f"{', '.join(sorted(halves))})")
    if any(count < 1 for count in plan.num_output.values()):
        raise ConfigError(f"--num-output: a class count must be at least 1, got {min(plan.num_output.values())}")
    if any(count < 1 for count in plan.reduced):
        raise ConfigError(f"--reduced: images per class must be at least 1, got {min(plan.reduced)}")
    known = {"split", "half", "phase", "per_class"}
    for option, template in (("--data", plan.data), ("--mean", plan.mean), ("--reduced-data", plan.reduced_data),
                             ("--reduced-mean", plan.reduced_mean)):
        extra = sorted(_placeholders(template or "") - known)
        if extra:
            raise ConfigError(f"{option} {template!r}: unknown placeholder {{{extra[0]}}} "
                              "(known: {split}, {half}, {phase}, {per_class})")
    needed = {"phase": "the test nets would read the training data"}
    if len(halves) > 1:
        needed["half"] = "the nets of halves A and B would train on the same classes"
    if len(plan.splits) + int(plan.natman) > 1:
        needed["split"] = "every split would train on the same halves"
    _require("--data", plan.data, needed)
    if plan.reduced:
        if not plan.reduced_data:
            raise ConfigError("--reduced needs --reduced-data TEMPLATE (with {per_class} and {phase})")
        needed = {"phase": "the test nets would read the training data"}
        if len(set(plan.reduced)) > 1:
            needed["per_class"] = "every reduced net would train on the same images"
        _require("--reduced-data", plan.reduced_data, needed)
        per_half = sorted(_placeholders(plan.mean or "") & {"split", "half"})
        if per_half and not plan.reduced_mean:  # filled in, they made paths such as means/0None.binaryproto
            raise ConfigError(f"--mean {plan.mean!r} names {{{per_half[0]}}}, which the reduced-volume nets (every "
                              "class, no split or half) do not have: give their mean with --reduced-mean TEMPLATE "
                              "(it may name {per_class})")
    elif plan.reduced_mean:
        raise ConfigError("--reduced-mean is the mean of the --reduced nets; give --reduced too")


def reduced_mean(plan: GridPlan) -> str | None:
    """The mean template of the reduced-volume nets (check_plan refused a per-half --mean without one)."""
    return plan.reduced_mean or plan.mean


@dataclass
class MissingData:
    """A data or mean path of the grid that does not exist: the option and template it came from."""

    option: str
    template: str
    path: str
    where: str     # which nets read it, e.g. "split 0, half A, phase train"

    def line(self) -> str:
        return f"{self.option} {self.template!r}: {self.path} does not exist ({self.where})"


def check_data(plan: GridPlan) -> list[MissingData]:
    """Every data source and mean file the grid's nets would read that does not exist, in the order
    the nets are made. `grid make` refuses a grid with any (a typo in a template would otherwise show
    only when `grid run` starts each net) unless `plan.data_later`: data still being converted, or
    paths that exist only where the grid will run, are made later on purpose."""
    missing: list[MissingData] = []
    halves = sorted({h for pair in plan.pairs for h in pair})
    splits = list(plan.splits) + (["natman"] if plan.natman else [])
    wanted: list[tuple[str, str, dict]] = []
    for split in splits:
        for half in halves:
            for phase in ("train", "test"):
                wanted.append(("--data", plan.data, dict(split=split, half=half, phase=phase, per_class="")))
            if plan.mean:
                wanted.append(("--mean", plan.mean, dict(split=split, half=half, phase="train", per_class="")))
    for count in plan.reduced if plan.reduced_data else []:
        for phase in ("train", "test"):
            wanted.append(("--reduced-data", plan.reduced_data or "", dict(split="", half=None, phase=phase,
                                                                             per_class=count)))
        mean = reduced_mean(plan)
        if mean:
            wanted.append(("--reduced-mean" if plan.reduced_mean else "--mean", mean,
                           dict(split="", half=None, phase="train", per_class=count)))
    seen: set[str] = set()
    for option, template, values in wanted:
        path = _fill(template, **values)
        if path in seen:
            continue
        seen.add(path)
        if not os.path.exists(path):
            where = ", ".join(f"{k} {v}" for k, v in values.items() if v not in ("", None)
                              and (k != "phase" or option != "--mean"))
            missing.append(MissingData(option, template, path, where))
    return missing


def _relative(path: str, folder: Path) -> str:
    return os.path.relpath(os.path.abspath(path), os.path.abspath(folder))


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


class _Writer:
    """Writes net folders and remembers their order for grid.json."""

    def __init__(self, out: Path, plan: GridPlan) -> None:
        self.out, self.plan = out, plan
        self.base = read_net(plan.net)
        self.solver = read_solver(plan.solver)
        self.max_iter = int(plan.max_iter if plan.max_iter is not None else self.solver.max_iter)
        if self.max_iter < 1:
            raise ConfigError(f"{plan.solver}: max_iter must be at least 1 (or give --max-iter)")
        self.solver.max_iter = self.max_iter
        self.names: list[str] = []

    def data_spec(self, folder: Path, n: int, frozen: bool, keep_names: bool, half: str | None,
                  template: str, mean_template: str | None, **values) -> TransferSpec:
        def path(phase: str) -> str:
            return _relative(_fill(template, phase=phase, half=half, **values), folder)
        mean = _relative(_fill(mean_template, phase="train", half=half, **values), folder) if mean_template else None
        classes = self.plan.num_output.get(half or "", self.plan.num_output.get(""))
        top_copied = n >= len(learnable_layers(self.base)) and not keep_names
        return TransferSpec(n, frozen, train_source=path("train"), test_source=path("test"), source=path("train"),
                            mean_file=mean, num_output=None if top_copied else classes, keep_names=keep_names)

    def write(self, spec: NetSpec, transfer: TransferSpec) -> None:
        folder = self.out / spec.name
        if spec.name in self.names:
            return
        folder.mkdir(parents=True, exist_ok=True)
        write_prototxt(folder / NET_PROTOTXT, transfer_net(self.base, transfer))
        solver = type(self.solver)()
        solver.CopyFrom(self.solver)
        for name in ("net_param", "train_net_param", "train_net"):
            solver.ClearField(name)
        del solver.test_net[:]
        del solver.test_net_param[:]
        solver.net = NET_PROTOTXT
        solver.snapshot_prefix = SNAPSHOT_PREFIX
        write_prototxt(folder / SOLVER_PROTOTXT, solver)
        (folder / Path(SNAPSHOT_PREFIX).parent).mkdir(exist_ok=True)
        command = ["trainer", "fit", "--solver", SOLVER_PROTOTXT, "--log", LOG_FILE]
        if spec.weights:
            command += ["--weights", spec.weights]
        spec.command = command
        write_net_spec(folder, spec)
        script = f"#!/bin/sh\n# train {spec.name} ({spec.family}); run from this folder\ncd \"$(dirname \"$0\")\"\n"
        (folder / "command.sh").write_text(script + shlex.join(command[:2] + fit_arguments(spec)) + "\n")
        (folder / "command.sh").chmod(0o755)
        self.names.append(spec.name)

    def final_weights(self, base: str, folder: Path) -> str:
        return _relative(str(self.out / base / f"{SNAPSHOT_PREFIX}_iter_{self.max_iter}.caffemodel"), folder)


def make_grid(out: str | os.PathLike, plan: GridPlan, warn: Callable[[str], None] | None = None) -> list[str]:
    """Write the grid's net folders and grid.json; returns the net names in run order.

    `warn` (default: a line on stderr) hears of a solver whose nets would never be scored, and of
    data that does not exist yet under ``plan.data_later`` (without it, missing data is refused)."""
    out = Path(out)
    if (out / GRID_FILE).exists():
        raise ConfigError(f"{out}: already holds a grid ({GRID_FILE}); choose a new folder")
    check_plan(plan)
    w = _Writer(out, plan)
    missing = check_data(plan)
    if missing and not plan.data_later:
        more = f" (and {len(missing) - 1} more data paths)" if len(missing) > 1 else ""
        raise ConfigError(f"{missing[0].line()}{more}; make the data first, or give --data-later if it will "
                          "exist when the grid runs")
    if missing:
        paths = f"{len(missing)} data paths of the grid do not" if len(missing) > 1 else "1 data path of the grid does not"
        (warn or _stderr)(f"warning: {paths} exist yet, e.g. {missing[0].line()}; `trainer grid run` fails a net "
                          "whose data is still missing then")
    if not len(w.solver.test_iter):
        (warn or _stderr)(f"warning: {plan.solver} has no test_iter, so the grid's nets have no test net: none is "
                          "ever tested and `trainer grid summary` will have no score for them")
    learnable = len(learnable_layers(w.base))
    layers = plan.layers if plan.layers is not None else list(range(1, learnable))
    bad = [n for n in layers if not 1 <= n <= learnable]
    if bad:
        raise ConfigError(f"--layers {bad[0]}: the net has {learnable} learnable layers")
    splits = list(plan.splits) + (["natman"] if plan.natman else [])
    for split in splits:
        halves = sorted({h for pair in plan.pairs for h in pair})
        for half in halves:
            name = base_name(split, half)
            family = "natman-base" if split == "natman" else "base"
            spec = NetSpec(name, family, 0, split, half, w.max_iter)
            w.write(spec, w.data_spec(out / name, 0, False, True, half, plan.data, plan.mean, split=split, per_class=""))
    for split in splits:
        for n in layers:
            for pair in plan.pairs:
                src, dst = pair[0], pair[1]  # two letters, checked above
                for fine_tuned in (False, True):
                    family = ("BnB" if src == dst else "AnB") + ("+" if fine_tuned else "")
                    if family not in plan.families:
                        continue
                    name = transfer_name(split, src, dst, n, fine_tuned)
                    folder = out / name
                    needs = base_name(split, src)
                    spec = NetSpec(name, ("natman-" if split == "natman" else "") + family, n, split, dst,
                                   w.max_iter, source_half=src, needs=needs, weights=w.final_weights(needs, folder))
                    w.write(spec, w.data_spec(folder, n, not fine_tuned, False, dst, plan.data, plan.mean, split=split,
                                              per_class=""))
            if plan.random_frozen and split != "natman":
                for dst in sorted({pair[1] for pair in plan.pairs}):
                    name = f"nolearn{split}{dst}_1_{n}"
                    spec = NetSpec(name, "random-frozen", n, split, dst, w.max_iter)
                    w.write(spec, w.data_spec(out / name, n, True, True, dst, plan.data, plan.mean, split=split,
                                              per_class=""))
    if plan.reduced and plan.reduced_data:  # check_plan: reduced_data is given
        for count in plan.reduced:
            name = f"reduced-{count:04d}"
            spec = NetSpec(name, "reduced", None, None, None, w.max_iter, per_class=count)
            w.write(spec, w.data_spec(out / name, 0, False, True, None, plan.reduced_data, reduced_mean(plan), split="",
                                      per_class=count))
    write_json(out / GRID_FILE, {"format": GRID_FORMAT, "version": 1, "nets": w.names,
                                 "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                 "base_net": os.path.abspath(plan.net), "base_solver": os.path.abspath(plan.solver),
                                 "max_iter": w.max_iter})
    return w.names
