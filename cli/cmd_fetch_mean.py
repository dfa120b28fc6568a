"""`datakit fetch-mean ilsvrc12`: Caffe's ImageNet mean (data/ilsvrc12/get_ilsvrc_aux.sh as a command)."""

from __future__ import annotations

import argparse

HELP = "Download Caffe's ILSVRC-2012 aux archive (resumable) and extract imagenet_mean.binaryproto, checked."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="mean recipe: ilsvrc12")
    p.add_argument("--out", default=".", help="folder to write the mean in (default: the current one)")
    p.add_argument("--mirror", "--base-url", dest="mirror", metavar="URL",
                   help="fetch the same file name from this server instead of the published URL")
    p.add_argument("--retries", type=int, default=5, help="attempts after the first, each resuming (default 5)")
    p.add_argument("--all", action="store_true",
                   help="also extract the archive's text files (synset_words.txt, synsets.txt, train/val/test.txt)")
    p.add_argument("--keep-archive", action="store_true", help="keep the downloaded .tar.gz (default: removed once extracted; one you copied there is always kept)")


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from datakit.errors import ConfigError
    from datakit.fetch import FetchOptions, fetch, mirror_url
    from datakit.fetch_mean import extract_mean
    from datakit.model_zoo import MEANS, unknown

    if args.name not in MEANS:
        raise ConfigError(unknown("mean", args.name, MEANS))
    recipe = MEANS[args.name]
    out = Path(args.out)
    mean = out / recipe.member
    if mean.is_file() and not args.all:
        from datakit.fetch_mean import check_mean
        means, identical = check_mean(mean.read_bytes(), recipe, str(mean))
        print(f"{mean}: already there; " + _verdict(means, identical, recipe))
        return 0
    url = mirror_url(recipe.url, args.mirror)
    archive, what = fetch(url, out / recipe.archive, sha1=None, options=FetchOptions(retries=max(0, args.retries)))
    report = extract_mean(archive, recipe, out, extras=args.all)
    if not args.keep_archive and what == "downloaded":  # an archive the user put there stays
        os.unlink(archive)
    print(f"{report.mean}: from {url}; " + _verdict(report.channel_means, report.identical_to_reference, recipe))
    for path in report.extracted:
        print(f"{path}: extracted")
    return 0


def _verdict(means: list[float], identical: bool, recipe) -> str:
    text = "per-channel means (BGR) " + ", ".join(f"{v:.4f}" for v in means)
    if identical:
        return text + f"; byte for byte the published mean (sha256 {recipe.sha256[:12]}...)"
    return text + ("; its bytes differ from the 2014 reference copy (values checked, not bytes: the archive "
                   "has no published checksum)")
