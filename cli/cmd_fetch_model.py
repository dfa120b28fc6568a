"""`datakit fetch-model NAME`: a published Caffe model, downloaded with resume and its sha1 checked
(Caffe's scripts/download_model_binary.py as a command)."""

from __future__ import annotations

import argparse

HELP = "Download a published Caffe model (bvlc_reference_caffenet, ...): resumable, sha1 verified."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?",
                   help="model recipe name (--list shows them), or a Caffe model folder whose readme.md front matter gives caffemodel, caffemodel_url and sha1 (as download_model_binary.py takes)")
    p.add_argument("--out", help="folder to write NAME.caffemodel in (default: the current one; for a model folder, that folder)")
    p.add_argument("--mirror", "--base-url", dest="mirror", metavar="URL",
                   help="fetch the same file name from this server instead of the published URL (e.g. a local copy)")
    p.add_argument("--retries", type=int, default=5, help="attempts after the first, each resuming (default 5)")
    p.add_argument("--list", action="store_true", help="list the model recipes and exit")


def run(args: argparse.Namespace) -> int:
    import os

    from datakit.errors import ConfigError
    from datakit.fetch import FetchOptions, fetch, mirror_url
    from datakit.model_zoo import MODELS, recipe_from_readme, unknown

    if args.list or not args.name:
        for r in MODELS.values():
            print(f"{r.name:<30} {r.about}\n{'':<30} {r.url} (sha1 {r.sha1})")
        return 0 if args.list else 2
    out = args.out
    if os.path.isdir(args.name):
        recipe = recipe_from_readme(args.name)
        out = out or args.name
    elif args.name in MODELS:
        recipe = MODELS[args.name]
    else:
        raise ConfigError(unknown("model", args.name, MODELS))
    url = mirror_url(recipe.url, args.mirror)
    dest, what = fetch(url, os.path.join(out or ".", recipe.filename), sha1=recipe.sha1,
                       options=FetchOptions(retries=max(0, args.retries)))
    verb = "already there" if what == "present" else f"downloaded from {url}"
    print(f"{dest}: {verb}; sha1 {recipe.sha1} verified")
    return 0
