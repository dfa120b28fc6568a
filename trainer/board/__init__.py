"""`trainer board DIR`: a local web dashboard of the runs, grids, databases and models under DIR.

NVIDIA DIGITS was Caffe's favourite front end: training curves live in a browser, datasets to
browse, an image dropped on a model's page to classify. This is that page for our files, with
no build step: static HTML, CSS and a little JavaScript shipped in ``static/``, charts drawn as
SVG on the server (:mod:`.svg`), live updates by server-sent events.

Modules: :mod:`.safety` (paths under DIR, token off loopback), :mod:`.discover` (what is
under DIR), :mod:`.runs`, :mod:`.grids`, :mod:`.databases`, :mod:`.models` (one card each),
:mod:`.state` (what was found and read, kept by file stamps), :mod:`.server` (the aiohttp
app) and :func:`serve` (what the command runs).
"""

from __future__ import annotations

from trainer.board.serve import serve

__all__ = ["serve"]
