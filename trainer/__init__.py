"""trainer: Caffe nets from prototxt, forward/backward on NumPy or CuPy, solvers.

Depends on datakit (formats, databases); datakit never imports trainer.
"""

__version__ = "0.1.0"
