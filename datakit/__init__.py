"""datakit: the data side of Caffe's workflow (assemble, convert, mean) in Python.

Importable without the trainer; every stage reads and writes files that Caffe
itself reads and writes.
"""

__version__ = "0.1.0"
