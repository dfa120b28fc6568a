"""`trainer export NET.prototxt [WEIGHTS.caffemodel] -o model.onnx`: ONNX or safetensors."""

from __future__ import annotations

import argparse

HELP = "Export a Caffe net and its weights to ONNX (or the weights to safetensors + a JSON sidecar)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="deploy net prototxt (an Input layer or input: fields; V0/V1 nets are upgraded)")
    p.add_argument("weights", nargs="?", help=".caffemodel to export (default: the net's fillers, e.g. to check a net)")
    p.add_argument("-o", "--output", required=True, help="file to write (model.onnx, or weights.safetensors)")
    p.add_argument("--format", choices=["onnx", "safetensors"], default=None,
                   help="default: from the output's extension (.safetensors), else onnx")
    p.add_argument("--mean", metavar="FILE", help="fold this mean image (.binaryproto or .npy) into the ONNX model as a first Sub node")
    p.add_argument("--mean-value", metavar="B,G,R", help="per-channel mean folded in instead (comma-separated)")
    p.add_argument("--scale", type=float, help="multiply the centred input by this (Caffe's transform_param scale), folded in")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")


def run(args: argparse.Namespace) -> int:
    from datakit.errors import ConfigError
    fmt = args.format or ("safetensors" if args.output.endswith(".safetensors") else "onnx")
    if fmt == "safetensors":
        if args.mean or args.mean_value or args.scale is not None:
            raise ConfigError("--mean / --mean-value / --scale fold preprocessing into an ONNX graph; "
                              "safetensors holds weights only")
        from trainer.export_safetensors import export_safetensors
        out, side = export_safetensors(args.model, args.weights, args.output)
        print(f"wrote {out} and {side}")
        return 0
    import numpy as np
    mean = None
    if args.mean and args.mean_value:
        raise ConfigError("give --mean or --mean-value, not both")
    if args.mean:
        from datakit.formats.blobproto import read_mean
        mean = read_mean(args.mean)  # .binaryproto or .npy (never a pickle), as C x H x W float32
    elif args.mean_value:
        try:
            mean = np.array([float(v) for v in args.mean_value.split(",")], np.float32)
        except ValueError:
            raise ConfigError(f"--mean-value {args.mean_value!r}: expected numbers separated by commas") from None
    from trainer.export_onnx import export_onnx
    out = export_onnx(args.model, args.weights, args.output, mean=mean, scale=args.scale, opset=args.opset)
    print(f"wrote {out}")
    return 0
