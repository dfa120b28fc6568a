"""datakit.formats.caffemodel: what is not a .caffemodel is named for what it is."""

from __future__ import annotations

import pytest

from datakit.errors import FormatError


def test_a_solverstate_given_as_weights_is_named_so(tmp_path):
    """`--weights x_iter_200.solverstate` said "layers #1 (''): layer type NONE has no current equivalent"."""
    import numpy as np

    from datakit.formats import caffe_pb2
    from datakit.formats.blobproto import array_to_blob
    from datakit.formats.caffemodel import read_caffemodel
    state = caffe_pb2.SolverState(iter=200, learned_net="lenet_iter_200.caffemodel", current_step=0)
    state.history.append(array_to_blob(np.ones((20, 1, 5, 5), np.float32)))
    for name in ("lenet_iter_200.solverstate", "renamed.bin"):
        (tmp_path / name).write_bytes(state.SerializeToString())
        with pytest.raises(FormatError) as err:
            read_caffemodel(tmp_path / name)
        assert "is a solver state (iteration 200: the update history), not weights; pass " \
               "lenet_iter_200.caffemodel as --weights" in str(err.value)
