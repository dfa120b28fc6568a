"""Caffe's wire formats: our own caffe.proto (Caffe's field numbers), its
generated module `caffe_pb2`, and helpers for .binaryproto, .caffemodel and
prototxt text."""

from datakit.formats import caffe_pb2

__all__ = ["caffe_pb2"]
