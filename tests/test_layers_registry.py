"""The layer registry: unknown types name their line and the nearest type, old nets upgrade, the
README's list is the registry's."""

from __future__ import annotations

import numpy as np
import pytest

from datakit.errors import FormatError
from tests.test_layers import TEST

# ------------------------------------------------------- unknown types ----


def test_unknown_type_names_the_prototxt_line_and_the_nearest_type(tmp_path):
    from trainer.layers import layer_class
    from trainer.net import Net
    path = tmp_path / "net.prototxt"
    path.write_text('name: "n"\nlayer { name: "in" type: "Input" top: "x"\n  input_param { shape { dim: 1 dim: 3 } } }\n'
                    'layer {\n  name: "act"\n  # a comment with { braces }\n  type: "Relu"\n  bottom: "x" top: "y"\n}\n')
    with pytest.raises(FormatError) as err:
        Net.from_file(path)
    assert str(err.value) == f"{path}:7: layer act: unknown layer type 'Relu'; did you mean 'ReLU' or 'PReLU' or 'ELU'?"
    with pytest.raises(FormatError, match="did you mean 'SigmoidCrossEntropyLoss'"):
        layer_class("SigmoidCrossEntropy", "x")
    with pytest.raises(FormatError, match="known types: AbsVal, Accuracy, ArgMax, BNLL"):
        layer_class("Zzzzzz", "x")


def test_fit_names_the_line_of_an_unknown_type_in_the_solver_or_net_file(tmp_path, monkeypatch):
    from trainer.fit import FitOptions, build
    monkeypatch.chdir(tmp_path)
    (tmp_path / "solver.prototxt").write_text(
        'base_lr: 0.1 max_iter: 1 random_seed: 1 snapshot_after_train: false\n'
        'net_param {\n  layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
        '  layer { name: "bad" type: "Embedd" bottom: "x" top: "y" }\n}\n')
    with pytest.raises(FormatError, match=r"solver.prototxt:4: layer bad: unknown layer type 'Embedd'; "
                                          r"did you mean 'Embed'\?"):
        build(FitOptions(solver="solver.prototxt", device="cpu", stream=None))


# ------------------------------------------------------- the README list ----


def test_readme_layer_list_is_the_registry():
    from pathlib import Path

    from trainer.layers import layer_class, registered_types
    from trainer.layers.catalogue import markdown, replace_block
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert replace_block(readme) == readme, \
        "README.md's layer list is stale: run `python -m trainer.layers.catalogue README.md`"
    assert all(f"`{t}`" in markdown() for t in registered_types()
               if layer_class(t).__module__.startswith("trainer.layers."))


def test_old_style_v1_nets_with_these_layers_upgrade_and_run():
    from datakit.formats.prototxt import parse_net
    from trainer.net import Net
    text = '''
    input: "x" input_shape { dim: 2 dim: 3 dim: 4 dim: 4 }
    input: "label" input_shape { dim: 2 }
    layers { name: "bnll" type: BNLL bottom: "x" top: "b" }
    layers { name: "mvn" type: MVN bottom: "b" top: "m" mvn_param { across_channels: true } }
    layers { name: "exp" type: EXP bottom: "m" top: "e" exp_param { scale: 0.5 } }
    layers { name: "th" type: THRESHOLD bottom: "e" top: "t" threshold_param { threshold: 1 } }
    layers { name: "cols" type: IM2COL bottom: "m" top: "c" convolution_param { kernel_size: 2 } }
    layers { name: "fc" type: INNER_PRODUCT bottom: "c" top: "fc" inner_product_param { num_output: 3
      weight_filler { type: "gaussian" } } }
    layers { name: "hinge" type: HINGE_LOSS bottom: "fc" bottom: "label" top: "loss" hinge_loss_param { norm: L2 } }
    layers { name: "sil" type: SILENCE bottom: "t" }
    '''
    net = Net(parse_net(text), TEST)
    assert [layer.type for layer in net.layers][1:] == ["BNLL", "MVN", "Split", "Exp", "Threshold", "Im2col",
                                                         "InnerProduct", "HingeLoss", "Silence"]
    assert np.isfinite(net.forward())
