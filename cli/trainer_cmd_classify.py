"""`trainer classify`: top-k classes of image files with a deploy net (Caffe's classify.py)."""

from __future__ import annotations

import argparse
import sys

from datakit.errors import ConfigError

from cli.trainer_options import add_device_options, check_exists, positive

HELP = "Classify image files with a deploy net + weights: top-k classes with their names."


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--model", required=True, help="deploy prototxt (Input layer)")
    p.add_argument("--weights", required=True, help=".caffemodel")
    mean = p.add_mutually_exclusive_group()
    mean.add_argument("--mean", help="mean image (.binaryproto or .npy); its per-channel mean is subtracted")
    mean.add_argument("--mean-value", type=_floats, metavar="B,G,R", help="per-channel mean in net channel order")
    p.add_argument("--labels", help="class names, one per line (e.g. synset_words.txt)")
    p.add_argument("--top-k", type=positive, default=5, help="classes to print per image (default 5)")
    crop = p.add_mutually_exclusive_group()
    crop.add_argument("--center-only", action="store_true", help="one center crop instead of 10 crops")
    crop.add_argument("--oversample", action="store_true", default=None,
                      help="Caffe's 10 crops (corners, center, mirrored), averaged (default, unless "
                           "--train-net says the net was trained without mirror)")
    p.add_argument("--image-dims", type=_ints, metavar="H,W",
                   help="resize images to this before cropping (default: the training images' size when "
                        "--train-net has a crop_size and its database is found; else the size of the mean image "
                        "when one is given, e.g. 256,256 for ImageNet's as classify.py; else the net input size)")
    p.add_argument("--channel-swap", type=_ints, default=[2, 1, 0], metavar="2,1,0",
                   help="order of the RGB channels fed to the net (default 2,1,0: BGR, as Caffe models)")
    p.add_argument("--train-net", metavar="TRAIN_VAL.prototxt",
                   help="take the scale, mean and crops from this training net's data layer "
                        "(e.g. LeNet's scale 0.00390625); the options below win over it")
    p.add_argument("--raw-scale", type=float, help="multiply [0,1] pixels by this (default 255)")
    p.add_argument("--input-scale", type=float, help="multiply after mean subtraction")
    p.add_argument("--output-blob", help="blob to read scores from (default: the last net output)")
    p.add_argument("--json", metavar="FILE", help="also write the predictions as JSON")
    add_device_options(p)


def run(args: argparse.Namespace) -> int:
    from datakit.report import write_report
    from trainer import backend
    from trainer.classify import Classifier, read_labels

    check_exists(args.model, "model prototxt")
    dims = None
    if args.image_dims:
        if len(args.image_dims) != 2:
            raise ConfigError("--image-dims takes H,W")
        dims = (args.image_dims[0], args.image_dims[1])
    # None: not given, so --train-net's value (or Caffe's default) applies
    options = {"raw_scale": args.raw_scale, "input_scale": args.input_scale, "image_dims": dims,
               "oversample": True if args.oversample else False if args.center_only else None}
    if args.train_net:
        from trainer.classify_train_net import preprocessing_from_train_net
        check_exists(args.train_net, "training net prototxt")
        mean_given = args.mean is not None or args.mean_value is not None
        pre = preprocessing_from_train_net(args.train_net, with_mean=not mean_given)
        print(pre.describe(mean_given=mean_given), file=sys.stderr)
        options = pre.options(**options)
    if options["raw_scale"] is None:
        options["raw_scale"] = 255.0
    if options["oversample"] is None:
        options["oversample"] = True
    clf = Classifier.from_files(args.model, args.weights, mean_file=args.mean, mean_value=args.mean_value,
                                xp=backend.select(args.device, args.gpu), channel_swap=args.channel_swap,
                                output_blob=args.output_blob, **options)
    labels = read_labels(args.labels) if args.labels else None
    preds = clf.classify_files(args.images, labels, top_k=args.top_k)
    for pred in preds:
        print(pred.format())
    if args.json:
        write_report(args.json, [p.as_dict() for p in preds])
    return 0
