"""Blob and Layer: the two types every layer family builds on.

A Blob holds a batch's values (``data``) and their gradients (``diff``) as
``xp`` arrays, like Caffe's Blob. A Layer is Caffe's Layer: ``setup`` checks its
parameters and creates its learnable blobs, ``reshape`` sets top shapes,
``forward`` computes tops from bottoms, ``backward`` writes bottom gradients
and *accumulates* parameter gradients (so ``iter_size`` and shared weights
work as in Caffe). Layers know nothing about the solver.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any, final
from collections.abc import Callable, Sequence

import numpy as np

from datakit.errors import FormatError
from datakit.formats import caffe_pb2


class Blob:
    """A named N-d array pair (data, diff) on the net's device.

    ``diff`` is allocated on first use: blobs that never carry a gradient (test
    nets, data tops) then cost no second buffer.
    """

    __slots__ = ("name", "xp", "dtype", "_data", "_diff", "diff_zero")

    def __init__(self, xp: ModuleType, shape: Sequence[int] = (), dtype: Any = np.float32,
                 name: str = "") -> None:
        self.name = name
        self.xp = xp
        self.dtype = np.dtype(dtype)
        self._data = xp.zeros(tuple(int(s) for s in shape), dtype=self.dtype)
        self._diff: Any = None
        # True while diff is known to be all zeros (fresh, or just cleared by
        # zero_diff): layers then write a param gradient instead of adding it,
        # which spares a temporary and a pass over memory. Anything that writes
        # diff in place between a clear and a backward must set this to False.
        self.diff_zero = True

    # -- arrays ----------------------------------------------------------------
    @property
    def data(self) -> Any:
        return self._data

    @data.setter
    def data(self, value: Any) -> None:
        """Replace the values (keeps shape consistent with diff)."""
        self._data = value
        if self._diff is not None and self._diff.shape != value.shape:
            self._diff = None

    @property
    def diff(self) -> Any:
        if self._diff is None:
            self._diff = self.xp.zeros(self._data.shape, dtype=self.dtype)
        return self._diff

    @diff.setter
    def diff(self, value: Any) -> None:
        self._diff = value
        self.diff_zero = False

    @property
    def has_diff(self) -> bool:
        return self._diff is not None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._data.shape)

    @property
    def count(self) -> int:
        return int(self._data.size)

    @property
    def num_axes(self) -> int:
        return self._data.ndim

    def reshape(self, shape: Sequence[int]) -> None:
        """Give the blob a new shape; memory is kept when the count is unchanged."""
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"blob {self.name}: negative dimension in {shape}")
        if shape == self.shape:
            return
        if int(np.prod(shape, dtype=np.int64)) == self.count and self._data.flags.c_contiguous:
            self._data = self._data.reshape(shape)
            if self._diff is not None:
                self._diff = self._diff.reshape(shape) if self._diff.flags.c_contiguous else None
        else:
            self._data = self.xp.zeros(shape, dtype=self.dtype)
            self._diff = None
            self.diff_zero = True

    def share_data(self, other: Blob) -> None:
        """Use ``other``'s data array (Caffe's ShareData), as Split and Flatten do."""
        self._data = other._data

    def zero_diff(self) -> None:
        if self._diff is not None:
            self._diff.fill(0)
        self.diff_zero = True

    def __repr__(self) -> str:
        return f"Blob({self.name!r}, shape={self.shape})"


def canonical_axis(axis: int, num_axes: int, layer: str) -> int:
    """Caffe's CanonicalAxisIndex: negative axes count from the end."""
    if not -num_axes <= axis < max(num_axes, 1):
        raise FormatError(f"layer {layer}: axis {axis} is out of range for a {num_axes}-axis blob")
    return axis + num_axes if axis < 0 else axis


class Layer:
    """Base class of every layer (Caffe's Layer), and the declaration of every hook the net,
    the solver and the rails call on a layer (so nothing has to probe with getattr).

    A subclass sets ``type`` (the Caffe type string, via ``register``) and
    overrides ``setup``/``reshape``/``forward``/``backward``; the Net calls
    ``set_up`` once (a template method: counts, then setup, then reshape),
    then ``forward``/``backward`` every iteration and ``close`` at the end.
    The class attributes below say how the net wires the layer; the methods
    after the four main ones have defaults that fit most layers.
    """

    #: the Caffe type string ("Convolution"); set by ``register``
    type: str = ""
    #: bottom / top blob counts, checked before ``setup`` (None: no upper bound)
    min_bottoms: int = 0
    max_bottoms: int | None = None
    min_tops: int = 0
    max_tops: int | None = None
    #: top 0 gets a default loss weight of 1 (``loss_weight`` in the prototxt overrides it)
    is_loss: bool = False
    #: a source of batches (no bottoms): never runs backward; the rails look for labels here
    is_data: bool = False
    #: the prototxt the layer was read from (set by the Net; Python layers import beside it).
    #: Not ``source``: data layers use that name for what they read (base_data.py).
    prototxt: str | None = None
    #: the learnable blobs are statistics, not parameters (BatchNorm's mean/variance):
    #: the net gives them lr_mult 0 and decay_mult 0 whatever the prototxt says
    fixed_params: bool = False
    #: index of the bottom that holds class labels for the scores in bottom 0
    #: (SoftmaxWithLoss, Accuracy: 1); the rails check those labels against the
    #: classifier's num_output. None: the layer takes no class labels.
    label_bottom: int | None = None
    #: set by ``trainer.rails.install`` on data layers: called with each batch's host
    #: labels and record names before the net sees them (raises LabelError). Layers
    #: that read labels from a source call it; others never do.
    label_check: Callable[[np.ndarray, list[str]], None] | None = None
    #: where ``log_warning`` sends messages (the training log); None: stderr
    warn: Callable[[str], None] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "set_up" in cls.__dict__:
            raise TypeError(f"{cls.__qualname__} overrides Layer.set_up; override setup/reshape instead "
                            "(set_up is the fixed order counts -> setup -> reshape the net relies on)")

    def __init__(self, param: caffe_pb2.LayerParameter, phase: int, xp: ModuleType, *,
                 dtype: Any = np.float32, rng: np.random.Generator | None = None,
                 base_dir: str = ".") -> None:
        self.param = param
        self.name = param.name
        self.phase = phase
        self.xp = xp
        self.dtype = np.dtype(dtype)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.base_dir = base_dir
        self.blobs: list[Blob] = []
        # Set by the Net: False when no backward pass will run through this
        # layer, so layers need not keep forward buffers (im2col columns).
        self.need_backward = True
        # Set by the Net per learnable blob: False when its lr_mult is 0, so
        # the layer skips that gradient (Caffe's param_propagate_down).
        self.param_propagate_down: list[bool] = []
        self._workspace: dict[str, Any] = {}

    # -- called by the net ------------------------------------------------------
    @final
    def set_up(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        """Caffe's Layer::SetUp: check the blob counts, then ``setup``, then ``reshape``.

        Not to be overridden (``__init_subclass__`` refuses it): the net relies on
        this order, and a layer customises the steps, not the sequence.
        """
        self.check_counts(len(bottoms), len(tops))
        self.setup(bottoms, tops)
        self.reshape(bottoms, tops)

    # -- the four methods a layer implements -----------------------------------
    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        """Check parameters, create and fill ``self.blobs`` (once, from ``set_up``)."""

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        """Set the top shapes from the bottom shapes (after ``setup``, and before every forward)."""
        raise NotImplementedError

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        """Compute the tops' ``data`` from the bottoms' (data layers: fetch the next batch)."""
        raise NotImplementedError

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        """Write bottom ``diff`` where ``propagate_down``; add into param ``diff``."""

    # -- hooks with defaults ------------------------------------------------------
    def close(self) -> None:
        """Release files, databases and threads the layer holds (data layers); idempotent."""

    def get_state(self) -> dict[str, Any]:
        """What a snapshot must store to resume this layer exactly (JSON-able), beyond its blobs.

        Data layers return their batch position and seed. The default ``{}`` means
        the layer is stateless: the solver stores nothing for it.
        """
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what ``get_state`` returned (called on resume, before the first forward)."""

    @property
    def source_name(self) -> str:
        """The file or folder the layer reads records from, for messages ('' when it reads none)."""
        return ""

    def log_warning(self, message: str) -> None:
        """Report something the user should know that does not stop the run (to ``warn``)."""
        if self.warn is not None:
            self.warn(message)
        else:
            print(f"warning: {message}", file=sys.stderr)

    # -- helpers --------------------------------------------------------------
    def param_needs_grad(self, k: int) -> bool:
        """Whether learnable blob ``k`` wants its gradient (True when the net has not said)."""
        return k >= len(self.param_propagate_down) or self.param_propagate_down[k]

    def allow_force_backward(self, bottom_index: int) -> bool:
        """False for bottoms that never get a gradient (labels of a loss)."""
        return True

    def check_counts(self, n_bottoms: int, n_tops: int) -> None:
        """Caffe's CheckBlobCounts, with an error that names the layer."""
        def bad(what: str, n: int, lo: int, hi: int | None) -> None:
            want = f"{lo}" if hi == lo else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
            raise FormatError(f"layer {self.name} ({self.type}): takes {want} {what} blob(s), got {n}")
        if n_bottoms < self.min_bottoms or (self.max_bottoms is not None and n_bottoms > self.max_bottoms):
            bad("bottom", n_bottoms, self.min_bottoms, self.max_bottoms)
        if n_tops < self.min_tops or (self.max_tops is not None and n_tops > self.max_tops):
            bad("top", n_tops, self.min_tops, self.max_tops)

    def error(self, message: str) -> FormatError:
        """A FormatError whose message names this layer."""
        return FormatError(f"layer {self.name} ({self.type}): {message}")

    def add_param_grad(self, k: int, value: Any, index: Any = None) -> None:
        """Caffe's gradient accumulation into ``blobs[k].diff`` (or a slice of its 2-D view).

        When the diff is known to be zero the value is written, not added.
        Call ``finish_param_grad(k)`` after the last slice.
        """
        blob = self.blobs[k]
        target = blob.diff if index is None else blob.diff.reshape(blob.shape[0], -1)[index]
        if blob.diff_zero:
            target[...] = value
        else:
            target += value

    def finish_param_grad(self, k: int) -> None:
        self.blobs[k].diff_zero = False

    def workspace(self, key: str, shape: Sequence[int], dtype: Any = None) -> Any:
        """A scratch array kept between iterations (contents undefined), like Caffe's buffers.

        Reusing big temporaries (GEMM results, transposed gradients) spares
        the page faults a fresh allocation of hundreds of MB costs each step.
        """
        shape = tuple(int(s) for s in shape)
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        buf = self._workspace.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self.xp.empty(shape, dtype=dtype)
            self._workspace[key] = buf
        return buf

    def new_blob(self, shape: Sequence[int], name: str = "") -> Blob:
        return Blob(self.xp, shape, self.dtype, name=name or self.name)

    def param_blob_from_host(self, values: np.ndarray, index: int) -> Blob:
        """A learnable blob holding ``values`` (filled on the host, then moved)."""
        blob = Blob(self.xp, values.shape, self.dtype, name=f"{self.name}[{index}]")
        blob.data = self.xp.asarray(values.astype(self.dtype, copy=False))
        return blob

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
