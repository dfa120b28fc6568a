"""CuPy RawKernels for trainer.kernels (loaded only when arrays live on a GPU).

One thread per output element (im2col, pooling forward, LRN) or per input
element (col2im, pooling backward: a gather, so no atomics). The conventions
equal the NumPy twins in trainer.kernels: im2col layout (C·kh·kw)×(N·oh·ow),
window-local argmax, Caffe's AVE divisor. Compiled per dtype on first use.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from trainer.backend import cupy_module

_THREADS = 256

_SOURCE = r"""
extern "C" {

__global__ void im2col(const T* x, T* col, long long total, int C, int H, int W,
                       int kh, int kw, int ph, int pw, int sh, int sw, int dh, int dw,
                       int oh, int ow) {
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
       idx += (long long)blockDim.x * gridDim.x) {
    // col[(c,i,j), (n,oy,ox)]: rows C*kh*kw, columns N*oh*ow
    int ox = idx % ow; long long r = idx / ow;
    int oy = r % oh; r /= oh;
    long long N = total / ((long long)C * kh * kw * oh * ow);
    long long n = r % N; r /= N;
    int j = r % kw; r /= kw;
    int i = r % kh; int c = r / kh;
    int y = oy * sh - ph + i * dh;
    int xx = ox * sw - pw + j * dw;
    T v = 0;
    if (y >= 0 && y < H && xx >= 0 && xx < W) v = x[((n * C + c) * H + y) * W + xx];
    col[idx] = v;
  }
}

__global__ void col2im(const T* col, T* x, long long total, int C, int H, int W,
                       int kh, int kw, int ph, int pw, int sh, int sw, int dh, int dw,
                       int oh, int ow) {
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
       idx += (long long)blockDim.x * gridDim.x) {
    int xx = idx % W; long long r = idx / W;
    int y = r % H; r /= H;
    int c = r % C; long long n = r / C;
    long long N = total / ((long long)C * H * W);
    T acc = 0;
    for (int i = 0; i < kh; ++i) {
      int ty = y + ph - i * dh;
      if (ty < 0 || ty % sh) continue;
      int oy = ty / sh;
      if (oy >= oh) continue;
      for (int j = 0; j < kw; ++j) {
        int tx = xx + pw - j * dw;
        if (tx < 0 || tx % sw) continue;
        int ox = tx / sw;
        if (ox >= ow) continue;
        acc += col[((((long long)(c * kh + i) * kw + j) * N + n) * oh + oy) * ow + ox];
      }
    }
    x[idx] = acc;
  }
}

__global__ void max_pool_fwd(const T* x, T* y, int* arg, long long total, int H, int W,
                             int kh, int kw, int ph, int pw, int sh, int sw, int oh, int ow) {
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
       idx += (long long)blockDim.x * gridDim.x) {
    int ox = idx % ow; long long r = idx / ow;
    int oy = r % oh; long long nc = r / oh;
    int y0 = oy * sh - ph, x0 = ox * sw - pw;
    T best = -INFINITY; int besti = 0;
    const T* plane = x + nc * H * W;
    for (int i = 0; i < kh; ++i) {
      int yy = y0 + i;
      if (yy < 0 || yy >= H) continue;
      for (int j = 0; j < kw; ++j) {
        int xx = x0 + j;
        if (xx < 0 || xx >= W) continue;
        T v = plane[yy * W + xx];
        if (v > best) { best = v; besti = i * kw + j; }
      }
    }
    y[idx] = best; arg[idx] = besti;
  }
}

__global__ void max_pool_bwd(const T* dy, const int* arg, T* dx, long long total, int H, int W,
                             int kh, int kw, int ph, int pw, int sh, int sw, int oh, int ow) {
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
       idx += (long long)blockDim.x * gridDim.x) {
    int xx = idx % W; long long r = idx / W;
    int yy = r % H; long long nc = r / H;
    int py = yy + ph, px = xx + pw;
    int oy0 = (py < kh) ? 0 : (py - kh) / sh + 1;
    int oy1 = min(py / sh + 1, oh);
    int ox0 = (px < kw) ? 0 : (px - kw) / sw + 1;
    int ox1 = min(px / sw + 1, ow);
    T acc = 0;
    for (int oy = oy0; oy < oy1; ++oy) {
      for (int ox = ox0; ox < ox1; ++ox) {
        long long o = (nc * oh + oy) * ow + ox;
        if (arg[o] == (py - oy * sh) * kw + (px - ox * sw)) acc += dy[o];
      }
    }
    dx[idx] = acc;
  }
}

__global__ void ave_pool_fwd(const T* x, T* y, long long total, int H, int W,
                             int kh, int kw, int ph, int pw, int sh, int sw, int oh, int ow) {
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
       idx += (long long)blockDim.x * gridDim.x) {
    int ox = idx % ow; long long r = idx / ow;
    int oy = r % oh; long long nc = r / oh;
    int hs = oy * sh - ph, ws = ox * sw - pw;
    int he = min(hs + kh, H + ph), we = min(ws + kw, W + pw);
    T div = (T)((he - hs) * (we - ws));
    hs = max(hs, 0); ws = max(ws, 0); he = min(he, H); we = min(we, W);
    const T* plane = x + nc * H * W;
    T acc = 0;
    for (int yy = hs; yy < he; ++yy)
      for (int xx = ws; xx < we; ++xx) acc += plane[yy * W + xx];
    y[idx] = acc / div;
  }
}

__global__ void ave_pool_bwd(const T* dy, T* dx, long long total, int H, int W,
                             int kh, int kw, int ph, int pw, int sh, int sw, int oh, int ow) {
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
       idx += (long long)blockDim.x * gridDim.x) {
    int xx = idx % W; long long r = idx / W;
    int yy = r % H; long long nc = r / H;
    int py = yy + ph, px = xx + pw;
    int oy0 = (py < kh) ? 0 : (py - kh) / sh + 1;
    int oy1 = min(py / sh + 1, oh);
    int ox0 = (px < kw) ? 0 : (px - kw) / sw + 1;
    int ox1 = min(px / sw + 1, ow);
    T acc = 0;
    for (int oy = oy0; oy < oy1; ++oy) {
      int hs = oy * sh - ph; int he = min(hs + kh, H + ph);
      for (int ox = ox0; ox < ox1; ++ox) {
        int ws = ox * sw - pw; int we = min(ws + kw, W + pw);
        acc += dy[(nc * oh + oy) * ow + ox] / (T)((he - hs) * (we - ws));
      }
    }
    dx[idx] = acc;
  }
}

__global__ void lrn_fwd(const T* x, T* y, T* scale, long long total, int C, int HW,
                        int size, T alpha_over_size, T beta, T k) {
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
       idx += (long long)blockDim.x * gridDim.x) {
    int p = idx % HW; long long r = idx / HW;
    int c = r % C; long long n = r / C;
    int pre = (size - 1) / 2;
    int c0 = max(c - pre, 0), c1 = min(c - pre + size, C);
    T acc = 0;
    for (int cc = c0; cc < c1; ++cc) { T v = x[(n * C + cc) * HW + p]; acc += v * v; }
    T s = k + alpha_over_size * acc;
    scale[idx] = s;
    y[idx] = x[idx] * pow(s, -beta);
  }
}

__global__ void lrn_bwd(const T* x, const T* y, const T* scale, const T* dy, T* dx,
                        long long total, int C, int HW, int size, T coeff, T beta) {
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
       idx += (long long)blockDim.x * gridDim.x) {
    int p = idx % HW; long long r = idx / HW;
    int c = r % C; long long n = r / C;
    int pre = (size - 1) / 2; int post = size - pre - 1;
    int c0 = max(c - post, 0), c1 = min(c + pre + 1, C);
    T acc = 0;
    for (int cc = c0; cc < c1; ++cc) {
      long long o = (n * C + cc) * HW + p;
      acc += dy[o] * y[o] / scale[o];
    }
    dx[idx] = dy[idx] * pow(scale[idx], -beta) - coeff * x[idx] * acc;
  }
}

}
"""


def module_source(dtype_name: str) -> str:
    """The CUDA source of every kernel for 'float32' or 'float64' (T is the element type)."""
    ctype = {"float32": "float", "float64": "double"}[dtype_name]
    return (f"typedef {ctype} T;\n#include <math_constants.h>\n"
            "#ifndef INFINITY\n#define INFINITY CUDART_INF_F\n#endif\n" + _SOURCE)


@cache
def _module(dtype_name: str) -> Any:
    return cupy_module().RawModule(code=module_source(dtype_name))


def _launch(name: str, dtype: Any, total: int, args: tuple) -> None:
    cp = cupy_module()
    kernel = _module(cp.dtype(dtype).name).get_function(name)
    grid = min(max(1, (total + _THREADS - 1) // _THREADS), 65535 * 8)
    kernel((grid,), (_THREADS,), args)


def _i(*values: int) -> tuple:
    cp = cupy_module()
    return tuple(cp.int32(v) for v in values)


def im2col(x: Any, kh: int, kw: int, ph: int, pw: int, sh: int, sw: int, dh: int, dw: int,
           oh: int, ow: int) -> Any:
    cp = cupy_module()
    x = cp.ascontiguousarray(x)
    n, c, h, w = x.shape
    col = cp.empty((c * kh * kw, n * oh * ow), dtype=x.dtype)
    total = col.size
    _launch("im2col", x.dtype, total,
            (x, col, cp.int64(total)) + _i(c, h, w, kh, kw, ph, pw, sh, sw, dh, dw, oh, ow))
    return col


def col2im(col: Any, shape: tuple[int, int, int, int], kh: int, kw: int, ph: int, pw: int,
           sh: int, sw: int, dh: int, dw: int, oh: int, ow: int) -> Any:
    cp = cupy_module()
    col = cp.ascontiguousarray(col)
    n, c, h, w = shape
    x = cp.empty(shape, dtype=col.dtype)
    total = x.size
    _launch("col2im", col.dtype, total,
            (col, x, cp.int64(total)) + _i(c, h, w, kh, kw, ph, pw, sh, sw, dh, dw, oh, ow))
    return x


def max_pool_forward(x: Any, kh: int, kw: int, ph: int, pw: int, sh: int, sw: int,
                     oh: int, ow: int) -> tuple[Any, Any]:
    cp = cupy_module()
    x = cp.ascontiguousarray(x)
    n, c, h, w = x.shape
    y = cp.empty((n, c, oh, ow), dtype=x.dtype)
    arg = cp.empty((n, c, oh, ow), dtype=cp.int32)
    _launch("max_pool_fwd", x.dtype, y.size,
            (x, y, arg, cp.int64(y.size)) + _i(h, w, kh, kw, ph, pw, sh, sw, oh, ow))
    return y, arg


def max_pool_backward(dy: Any, arg: Any, shape: tuple[int, int, int, int], kh: int, kw: int,
                      ph: int, pw: int, sh: int, sw: int) -> Any:
    cp = cupy_module()
    dy = cp.ascontiguousarray(dy)
    oh, ow = dy.shape[2:]
    dx = cp.empty(shape, dtype=dy.dtype)
    _launch("max_pool_bwd", dy.dtype, dx.size,
            (dy, arg, dx, cp.int64(dx.size)) + _i(shape[2], shape[3], kh, kw, ph, pw, sh, sw, oh, ow))
    return dx


def ave_pool_forward(x: Any, kh: int, kw: int, ph: int, pw: int, sh: int, sw: int,
                     oh: int, ow: int) -> Any:
    cp = cupy_module()
    x = cp.ascontiguousarray(x)
    n, c, h, w = x.shape
    y = cp.empty((n, c, oh, ow), dtype=x.dtype)
    _launch("ave_pool_fwd", x.dtype, y.size,
            (x, y, cp.int64(y.size)) + _i(h, w, kh, kw, ph, pw, sh, sw, oh, ow))
    return y


def ave_pool_backward(dy: Any, shape: tuple[int, int, int, int], kh: int, kw: int,
                      ph: int, pw: int, sh: int, sw: int) -> Any:
    cp = cupy_module()
    dy = cp.ascontiguousarray(dy)
    oh, ow = dy.shape[2:]
    dx = cp.empty(shape, dtype=dy.dtype)
    _launch("ave_pool_bwd", dy.dtype, dx.size,
            (dy, dx, cp.int64(dx.size)) + _i(shape[2], shape[3], kh, kw, ph, pw, sh, sw, oh, ow))
    return dx


def lrn_across_forward(x: Any, size: int, alpha: float, beta: float, k: float) -> tuple[Any, Any]:
    cp = cupy_module()
    x = cp.ascontiguousarray(x)
    n, c, h, w = x.shape
    y = cp.empty_like(x)
    scale = cp.empty_like(x)
    t = x.dtype.type
    _launch("lrn_fwd", x.dtype, x.size,
            (x, y, scale, cp.int64(x.size)) + _i(c, h * w, size) + (t(alpha / size), t(beta), t(k)))
    return y, scale


def lrn_across_backward(x: Any, y: Any, scale: Any, dy: Any, size: int, alpha: float,
                        beta: float) -> Any:
    cp = cupy_module()
    # The kernel indexes every buffer as C-contiguous N x C x H x W (no-ops for the arrays layers make).
    x, y, scale, dy = (cp.ascontiguousarray(a) for a in (x, y, scale, dy))
    n, c, h, w = x.shape
    dx = cp.empty_like(x)
    t = x.dtype.type
    _launch("lrn_bwd", x.dtype, x.size,
            (x, y, scale, dy, dx, cp.int64(x.size)) + _i(c, h * w, size)
            + (t(2.0 * alpha * beta / size), t(beta)))
    return dx
