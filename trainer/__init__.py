"""trainer: Caffe nets from prototxt, forward/backward on NumPy or CuPy, solvers.

Depends on datakit (formats, databases); datakit never imports trainer.

The public calls (see :mod:`trainer.api`; each is the ``trainer`` command of the same
name, same options and defaults) resolve on first use, so ``import trainer`` imports
nothing heavy: ``trainer.fit``, ``trainer.test``, ``trainer.export``, ``trainer.plot``,
``trainer.load_net``, ``trainer.transfer``.
"""

from datakit import __version__ as __version__  # one version for the distribution

#: public name -> "module:attribute", resolved lazily (datakit.lazy)
API = {
    "fit": "trainer.api:fit",
    "test": "trainer.api:test",
    "export": "trainer.api:export",
    "plot": "trainer.api:plot",
    "load_net": "trainer.api:load_net",
    "transfer": "trainer.api:transfer",
}

from datakit.lazy import install as _install  # noqa: E402

_install(__name__, API)
