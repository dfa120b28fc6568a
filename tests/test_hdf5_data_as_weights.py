"""An HDF5 *data* file (datakit convert --backend hdf5, HDF5Data's input) given where weights go: one line."""

from __future__ import annotations

import cv2
import numpy as np

from tests.test_fit import project  # noqa: F401  (fixture: a tiny LMDB project in tmp_path)


def test_an_hdf5_data_file_as_weights_is_one_line_everywhere(project, tmp_path, cli):
    (tmp_path / "img").mkdir()
    for i in range(2):
        cv2.imwrite(str(tmp_path / "img" / f"{i}.png"), np.full((8, 8, 3), 40 * i, np.uint8))
    (tmp_path / "list.txt").write_text("0.png 0\n1.png 1\n")
    made = cli("datakit", "convert", "img", "list.txt", "h5", "--backend", "hdf5", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    [data] = sorted((tmp_path / "h5").glob("*.h5"))
    h5 = str(data.relative_to(tmp_path))
    solver = project("s.prototxt", max_iter=2, prefix="s/run")
    (tmp_path / "deploy.prototxt").write_text(
        'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 6 dim: 6 } } }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 } }\n')
    runs = {
        "fit": cli("trainer", "fit", "--solver", solver, "--device", "cpu", "--quiet", "--weights", h5, cwd=tmp_path),
        "test": cli("trainer", "test", "--model", f"{solver}.net", "--weights", h5, "--device", "cpu",
                    "--iterations", "1", cwd=tmp_path),
        "export": cli("trainer", "export", "deploy.prototxt", h5, "-o", "x.onnx", cwd=tmp_path),
        "describe": cli("datakit", "describe", h5, cwd=tmp_path),
    }
    for what, res in runs.items():
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1 and "Traceback" not in res.stderr, (what, res.stderr)
        assert len(lines) == 1 and lines[0].startswith(("trainer: error: ", "datakit: error: ")), (what, lines)
        assert f"{h5}: not a Caffe .caffemodel.h5" in lines[0], (what, lines[0])
        assert "the datasets data (2, 3, 8, 8)" in lines[0] and "label (2" in lines[0], (what, lines[0])
    resume = cli("trainer", "fit", "--solver", solver, "--device", "cpu", "--quiet", "--snapshot", h5,
                 cwd=tmp_path)
    assert resume.returncode == 1 and "an HDF5 data file?" in resume.stderr and "a .caffemodel.h5?" not in resume.stderr
