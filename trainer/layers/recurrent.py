"""Caffe's recurrent layers, RNN and LSTM, over T×N sequences with a ``cont`` indicator.

Bottoms, as Caffe's RecurrentLayer: x (T × N × ...), cont (T × N: 0 starts a sequence,
1 continues it), optionally x_static (N × ...: added to every step's input), and with
``recurrent_param.expose_hidden`` the initial state (RNN: h_0; LSTM: h_0, c_0, each 1 × N × H).
Tops: the outputs (T × N × num_output) and, exposed, the final state (h_T; h_T, c_T).
Without expose_hidden the final state of one forward is the next forward's initial state
(zero at first), as in Caffe, so a long sequence can be fed in pieces; ``cont`` = 0 cuts it.

Learnable blobs in Caffe's order (the order its unrolled net creates them), so caffemodels
load as they are. LSTM: W_xc (4H × I), b_c (4H), [W_xc_static (4H × I_s)], W_hc (4H × H); the
gates are stacked i, f, o, g:  c_t = cont_t·f_t·c_{t−1} + i_t·g_t,  h_t = o_t·tanh(c_t),
the gate input W_xc·x_t + b_c + W_hc·(cont_t·h_{t−1}) [+ W_xc_static·x_static].
RNN: W_xh (H × I), b_h, [W_xh_static], W_hh (H × H), W_ho (H × H), b_o:
h_t = tanh(W_xh·x_t + b_h + W_hh·(cont_t·h_{t−1}) [+ ...]),  o_t = tanh(W_ho·h_t + b_o).
The steps run as one loop here instead of Caffe's unrolled net: the same numbers, less memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import register
from .base import Blob, Layer
from .learnable import filler_or_default, make_param_blob


def _sigmoid(xp: Any, x: Any) -> Any:
    return 0.5 * xp.tanh(0.5 * x) + 0.5


class _Recurrent(Layer):
    """Shared wiring: bottoms, parameters, carried state; subclasses run the steps."""

    min_bottoms = 2
    min_tops = 1
    gates = 1                   # rows of W_x per hidden unit (LSTM: 4)
    state_names: tuple[str, ...] = ("h",)
    output_weights = False      # RNN: W_ho, b_o after W_hh

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 1  # no gradient for the sequence indicators, as in Caffe

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.recurrent_param
        if p.num_output < 1:
            raise self.error("recurrent_param.num_output must be positive")
        self.hidden = h = int(p.num_output)
        self.expose = bool(p.expose_hidden)
        n_state = len(self.state_names) if self.expose else 0
        if len(bottoms) not in (2 + n_state, 3 + n_state):
            state = ", ".join(s + "_0" for s in self.state_names) if self.expose else "no state"
            raise self.error(f"takes x, cont, optionally x_static, then {state} (expose_hidden: "
                             f"{str(self.expose).lower()}); got {len(bottoms)} bottoms")
        if len(tops) != 1 + n_state:
            raise self.error(f"takes {1 + n_state} top(s) (the output{' and the final state' if n_state else ''}), "
                             f"got {len(tops)}")
        self.static = len(bottoms) == 3 + n_state
        x_shape = bottoms[0].shape
        if len(x_shape) < 3 or bottoms[1].shape != x_shape[:2]:
            raise self.error(f"x must be T x N x ... and cont T x N; got x {x_shape}, cont {bottoms[1].shape}")
        wf = filler_or_default(p.HasField("weight_filler"), p.weight_filler)
        bf = filler_or_default(p.HasField("bias_filler"), p.bias_filler)
        rows = self.gates * h
        shapes = [((rows, int(np.prod(x_shape[2:]))), wf), ((rows,), bf)]
        if self.static:
            shapes.append(((rows, bottoms[2].count // bottoms[2].shape[0]), wf))
        shapes.append(((rows, h), wf))
        if self.output_weights:
            shapes += [((h, h), wf), ((h,), bf)]
        self.blobs = [make_param_blob(self, k, s, f) for k, (s, f) in enumerate(shapes)]
        self._carry: list[Any] | None = None

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        t, n = bottoms[0].shape[:2]
        if bottoms[1].shape != (t, n):
            raise self.error(f"cont has shape {bottoms[1].shape}; x needs {(t, n)}")
        tops[0].reshape((t, n, self.hidden))
        for top in tops[1:]:
            top.reshape((1, n, self.hidden))

    def _initial(self, bottoms: list[Blob], n: int) -> list[Any]:
        if self.expose:
            first = 3 if self.static else 2
            return [b.data.reshape(n, self.hidden) for b in bottoms[first:]]
        if self._carry is None or self._carry[0].shape[0] != n:
            self._carry = [self.xp.zeros((n, self.hidden), dtype=self.dtype) for _ in self.state_names]
        return self._carry

    def _inputs(self, bottoms: list[Blob]) -> tuple[Any, Any, Any]:
        """(W_x·x + b as T×N×rows, cont as T×N×1, W_static·x_static as N×rows or 0)."""
        x = bottoms[0].data
        t, n = x.shape[:2]
        w, b = self.blobs[0].data, self.blobs[1].data
        gx = (x.reshape(t * n, -1) @ self.xp.ascontiguousarray(w.T) + b).reshape(t, n, -1)
        gs = bottoms[2].data.reshape(n, -1) @ self.xp.ascontiguousarray(self.blobs[2].data.T) if self.static else 0
        return gx, bottoms[1].data.reshape(t, n, 1), gs

    def _finish(self, bottoms: list[Blob], tops: list[Blob], final: list[Any]) -> None:
        if self.expose:
            for top, s in zip(tops[1:], final):
                top.data = s.reshape(top.shape)
        else:
            self._carry = [s.copy() for s in final]

    def _input_grads(self, bottoms: list[Blob], propagate_down: list[bool], dgx: Any, d_initial: list[Any]) -> None:
        """Gradients of W_x, b, W_static and the bottoms, from the gate-input gradients dgx (T×N×rows)."""
        xp = self.xp
        x = bottoms[0].data
        t, n = x.shape[:2]
        flat = dgx.reshape(t * n, -1)
        if self.param_needs_grad(0):
            self.add_param_grad(0, xp.ascontiguousarray(flat.T) @ x.reshape(t * n, -1))
            self.finish_param_grad(0)
        if self.param_needs_grad(1):
            self.add_param_grad(1, flat.sum(axis=0))
            self.finish_param_grad(1)
        if propagate_down[0]:
            bottoms[0].diff = (flat @ self.blobs[0].data).reshape(x.shape)
        if self.static:
            ds = dgx.sum(axis=0)
            if self.param_needs_grad(2):
                self.add_param_grad(2, xp.ascontiguousarray(ds.T) @ bottoms[2].data.reshape(n, -1))
                self.finish_param_grad(2)
            if propagate_down[2]:
                bottoms[2].diff = (ds @ self.blobs[2].data).reshape(bottoms[2].shape)
        if self.expose:
            first = 3 if self.static else 2
            for k, g in enumerate(d_initial):
                if propagate_down[first + k]:
                    bottoms[first + k].diff = g.reshape(bottoms[first + k].shape)

    def _final_diffs(self, tops: list[Blob], n: int) -> list[Any]:
        if self.expose:
            return [top.diff.reshape(n, self.hidden) for top in tops[1:]]
        return [self.xp.zeros((n, self.hidden), dtype=self.dtype) for _ in self.state_names]

    # -- resume: the carried state travels in the snapshot's JSON sidecar, so a resumed run
    #    continues its sequences as the uninterrupted one does (Caffe's snapshots drop it).
    def get_state(self) -> dict:
        if self.expose or self._carry is None:
            return {}
        from trainer.backend import to_host
        return {"carry": [np.asarray(to_host(s), dtype=np.float64).tolist() for s in self._carry]}

    def set_state(self, state: dict) -> None:
        if "carry" in state and not self.expose:
            self._carry = [self.xp.asarray(np.asarray(s, dtype=self.dtype)) for s in state["carry"]]

    def _accumulate(self, k: int, value: Any) -> None:
        if self.param_needs_grad(k):
            self.add_param_grad(k, value)
            self.finish_param_grad(k)


@register("LSTM")
class LSTMLayer(_Recurrent):
    max_bottoms = 5
    max_tops = 3
    gates = 4
    state_names = ("h", "c")

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        xp, H = self.xp, self.hidden
        gx, cont, gs = self._inputs(bottoms)
        h, c = self._initial(bottoms, gx.shape[1])
        w_hc_t = xp.ascontiguousarray(self.blobs[-1].data.T)
        out = xp.empty(gx.shape[:2] + (H,), dtype=self.dtype)
        self._steps = []
        for t in range(gx.shape[0]):
            hc = cont[t] * h
            g = gx[t] + hc @ w_hc_t + gs
            i, f, o = (_sigmoid(xp, g[:, k * H:(k + 1) * H]) for k in range(3))
            gg = xp.tanh(g[:, 3 * H:])
            c_prev, c = c, cont[t] * f * c + i * gg
            tc = xp.tanh(c)
            h = o * tc
            out[t] = h
            self._steps.append((hc, c_prev, i, f, o, gg, tc))
        tops[0].data = out
        self._finish(bottoms, tops, [h, c])

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        xp = self.xp
        dy = tops[0].diff
        cont = bottoms[1].data.reshape(dy.shape[0], dy.shape[1], 1)
        w_hc = self.blobs[-1].data
        dh_next, dc_next = self._final_diffs(tops, dy.shape[1])
        dgx = xp.empty(dy.shape[:2] + (4 * self.hidden,), dtype=self.dtype)
        dw_hc = xp.zeros(w_hc.shape, dtype=self.dtype)
        for t in range(dy.shape[0] - 1, -1, -1):
            hc, c_prev, i, f, o, gg, tc = self._steps[t]
            dh = dy[t] + dh_next
            dc = dc_next + dh * o * (1 - tc * tc)
            dg = xp.concatenate([dc * gg * i * (1 - i), dc * cont[t] * c_prev * f * (1 - f),
                                 dh * tc * o * (1 - o), dc * i * (1 - gg * gg)], axis=1)
            dgx[t] = dg
            dw_hc += xp.ascontiguousarray(dg.T) @ hc
            dh_next = (dg @ w_hc) * cont[t]
            dc_next = dc * cont[t] * f
        self._accumulate(len(self.blobs) - 1, dw_hc)
        self._input_grads(bottoms, propagate_down, dgx, [dh_next, dc_next])


@register("RNN")
class RNNLayer(_Recurrent):
    max_bottoms = 4
    max_tops = 2
    output_weights = True

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        xp = self.xp
        gx, cont, gs = self._inputs(bottoms)
        (h,) = self._initial(bottoms, gx.shape[1])
        w_hh, w_ho, b_o = (self.blobs[k].data for k in (-3, -2, -1))
        w_hh_t, w_ho_t = xp.ascontiguousarray(w_hh.T), xp.ascontiguousarray(w_ho.T)
        out = xp.empty(gx.shape[:2] + (self.hidden,), dtype=self.dtype)
        self._steps = []
        for t in range(gx.shape[0]):
            hc = cont[t] * h
            h = xp.tanh(gx[t] + hc @ w_hh_t + gs)
            out[t] = xp.tanh(h @ w_ho_t + b_o)
            self._steps.append((hc, h))
        tops[0].data = out
        self._finish(bottoms, tops, [h])

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        xp = self.xp
        dy, o = tops[0].diff, tops[0].data
        cont = bottoms[1].data.reshape(dy.shape[0], dy.shape[1], 1)
        w_hh, w_ho = self.blobs[-3].data, self.blobs[-2].data
        (dh_next,) = self._final_diffs(tops, dy.shape[1])
        dgx = xp.empty(dy.shape, dtype=self.dtype)
        dw_hh, dw_ho = xp.zeros(w_hh.shape, dtype=self.dtype), xp.zeros(w_ho.shape, dtype=self.dtype)
        do_all = dy * (1 - o * o)
        for t in range(dy.shape[0] - 1, -1, -1):
            hc, h = self._steps[t]
            dw_ho += xp.ascontiguousarray(do_all[t].T) @ h
            da = (do_all[t] @ w_ho + dh_next) * (1 - h * h)
            dgx[t] = da
            dw_hh += xp.ascontiguousarray(da.T) @ hc
            dh_next = (da @ w_hh) * cont[t]
        k = len(self.blobs)
        self._accumulate(k - 3, dw_hh)
        self._accumulate(k - 2, dw_ho)
        self._accumulate(k - 1, do_all.reshape(-1, self.hidden).sum(axis=0))
        self._input_grads(bottoms, propagate_down, dgx, [dh_next])


@register("LSTMUnit")
class LSTMUnitLayer(Layer):
    """One LSTM step, Caffe's building block: bottoms c_{t−1} (1×N×H), gate inputs (1×N×4H, i f o g)
    and cont (1×N); tops c_t and h_t. No gradient reaches cont."""

    min_bottoms = max_bottoms = 3
    min_tops = max_tops = 2

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 2

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        c, x = bottoms[0].shape, bottoms[1].shape
        if len(c) != 3 or x != c[:2] + (4 * c[2],) or bottoms[2].shape != c[:2]:
            raise self.error(f"needs c (1,N,H), gates (1,N,4H), cont (1,N); got {c}, {x}, {bottoms[2].shape}")
        self.hidden = c[2]
        for t in tops:
            t.reshape(c)

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        xp, H = self.xp, self.hidden
        c_prev, g = bottoms[0].data, bottoms[1].data
        cont = bottoms[2].data[..., None]
        i, f, o = (_sigmoid(xp, g[..., k * H:(k + 1) * H]) for k in range(3))
        gg = xp.tanh(g[..., 3 * H:])
        c = cont * f * c_prev + i * gg
        tc = xp.tanh(c)
        self._saved = (c_prev, cont, i, f, o, gg, tc)
        tops[0].data, tops[1].data = c, o * tc

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        c_prev, cont, i, f, o, gg, tc = self._saved
        dh = tops[1].diff
        dc = tops[0].diff + dh * o * (1 - tc * tc)
        if propagate_down[0]:
            bottoms[0].diff = dc * cont * f
        if propagate_down[1]:
            bottoms[1].diff = self.xp.concatenate([dc * gg * i * (1 - i), dc * cont * c_prev * f * (1 - f),
                                                   dh * tc * o * (1 - o), dc * i * (1 - gg * gg)], axis=-1)
