"""Python layers written exactly as for Caffe's pycaffe (numpy only), used by tests/test_python_layer.py."""

import numpy as np

import caffe


class ScaleBy(caffe.Layer):
    """y = k * x with k from param_str (no learnable blobs)."""

    def setup(self, bottom, top):
        self.k = float(self.param_str or 1)
        if len(bottom) != 1:
            raise Exception("ScaleBy takes one bottom")

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.k * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = self.k * top[0].diff


class Affine(caffe.Layer):
    """y = x W^T + b with learnable blobs W (out x in) and b (out), as pycaffe layers keep them."""

    def setup(self, bottom, top):
        n_out = int(self.param_str)
        n_in = bottom[0].count // bottom[0].num
        self.blobs.add_blob(n_out, n_in)
        self.blobs.add_blob(n_out)
        self.blobs[0].data[...] = np.random.RandomState(0).randn(n_out, n_in) * 0.1
        self.blobs[1].data[...] = 0

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].num, self.blobs[0].shape[0])

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(bottom[0].num, -1)
        top[0].data[...] = x.dot(self.blobs[0].data.T) + self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        x = bottom[0].data.reshape(bottom[0].num, -1)
        self.blobs[0].diff[...] += top[0].diff.T.dot(x)
        self.blobs[1].diff[...] += top[0].diff.sum(axis=0)
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff.dot(self.blobs[0].data).reshape(bottom[0].data.shape)


class EuclideanLoss(caffe.Layer):
    """The pyloss.py example of Caffe's examples/pycaffe/layers."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num


class Regression(caffe.Layer):
    """A data layer: fixed inputs x and targets y = x A (seeded by param_str), one batch per forward."""

    def setup(self, bottom, top):
        rng = np.random.RandomState(int(self.param_str))
        self.x = rng.randn(8, 5).astype(np.float32)
        self.y = self.x.dot(rng.randn(5, 3)).astype(np.float32)

    def reshape(self, bottom, top):
        top[0].reshape(8, 5)
        top[1].reshape(8, 3)

    def forward(self, bottom, top):
        top[0].data[...] = self.x
        top[1].data[...] = self.y


class Broken(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        raise ValueError("boom in forward")
