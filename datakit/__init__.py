"""datakit: the data side of Caffe's workflow (assemble, convert, mean) in Python.

Importable without the trainer; every stage reads and writes files that Caffe
itself reads and writes.

The public calls (see :mod:`datakit.api`; each is the CLI command of the same name,
same options and defaults) resolve on first use, so ``import datakit`` imports
nothing heavy: ``datakit.assemble``, ``datakit.convert``, ``datakit.mean``,
``datakit.inspect``, ``datakit.open_db``. PyTorch datasets live in
:mod:`datakit.torch` (``pip install 'datakit[torch]'``).
"""

__version__ = "0.1.0"

#: public name -> "module:attribute", resolved lazily (datakit.lazy)
API = {
    "assemble": "datakit.api:assemble",
    "convert": "datakit.api:convert",
    "mean": "datakit.api:mean",
    "inspect": "datakit.api:inspect",
    "open_db": "datakit.api:open_db",
}

from datakit.lazy import install as _install  # noqa: E402

_install(__name__, API)
