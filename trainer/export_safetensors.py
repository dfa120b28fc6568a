"""Export a Caffe net's weights as safetensors, with a JSON sidecar that says what each tensor is.

Tensor names are ``layer.blob``: the Caffe layer name and the blob's index in that layer
(``conv1.0`` the filters, ``conv1.1`` the bias; BatchNorm's ``.0/.1/.2`` its mean sum,
variance sum and scale factor, as Caffe stores them). The sidecar (``OUT.json``) lists, for
each tensor, its shape, layer, layer type, index and role, plus the net's name and the
source files, so the weights can be loaded into another framework without the prototxt.
Shapes are Caffe's own (Convolution weights num_output × channels/group × kh × kw).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from datakit.atomic import write_bytes_atomic, write_text_atomic

ROLES = {
    "BatchNorm": ["mean_sum", "variance_sum", "scale_factor"],
    "Scale": ["scale", "bias"],
    "PReLU": ["slope"],
}


def role(layer_type: str, index: int, n_blobs: int) -> str:
    """What blob `index` of a layer of `layer_type` holds (weight / bias for most layers)."""
    names = ROLES.get(layer_type, ["weight", "bias"])
    return names[index] if index < len(names) else f"blob{index}"


def export_safetensors(prototxt: str | os.PathLike, weights: str | os.PathLike | None,
                       output: str | os.PathLike) -> tuple[Path, Path]:
    """Write OUTPUT (safetensors) and OUTPUT.json (the sidecar); returns both paths."""
    from safetensors.numpy import save

    from trainer.export_onnx import build_net
    net = build_net(prototxt, weights)
    try:
        tensors: dict[str, np.ndarray] = {}
        meta: dict[str, dict] = {}
        for layer in net.layers:
            for k, arr in enumerate(net.param_arrays().get(layer.name, [])):
                name = f"{layer.name}.{k}"
                tensors[name] = np.ascontiguousarray(arr, dtype=np.float32)
                meta[name] = {"shape": list(arr.shape), "dtype": "float32", "layer": layer.name,
                              "layer_type": layer.type, "index": k, "role": role(layer.type, k, len(layer.blobs))}
    finally:
        net.close()
    out = Path(output)
    # safetensors' own save_file creates the file private (0600); written through datakit.atomic it gets
    # the mode any other file of the user gets (the umask's), like the sidecar and the ONNX export
    write_bytes_atomic(out, save(tensors, metadata={"format": "caffe-layer-blobs", "net": net.name or ""}))
    sidecar = out.with_name(out.name + ".json")
    doc = {"net": net.name, "prototxt": str(prototxt), "weights": None if weights is None else str(weights),
           "naming": "layer.blob: Caffe layer name and blob index", "tensors": meta}
    write_text_atomic(sidecar, json.dumps(doc, indent=1) + "\n")
    return out, sidecar


__all__ = ["export_safetensors", "role"]
