"""trainer: Caffe nets from prototxt, forward/backward on NumPy or CuPy, solvers.

Depends on datakit (formats, databases); datakit never imports trainer.
"""

from datakit import __version__ as __version__  # one version for the distribution
