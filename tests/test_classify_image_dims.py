"""`trainer classify`'s 10 crops are cut from an image the size of the mean (256×256 for ImageNet), as classify.py."""

from __future__ import annotations

import numpy as np
from google.protobuf import text_format

from datakit.formats import caffe_pb2
from datakit.formats.blobproto import read_mean
from trainer.classify import Classifier
from trainer.net import Net

# Global average pooling: each crop's per-channel mean, so crops cut from different places differ.
NET = '''
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 227 dim: 227 } } }
layer { name: "gap" type: "Pooling" bottom: "data" top: "gap" pooling_param { pool: AVE global_pooling: true } }
'''


def classifier(**options) -> Classifier:
    return Classifier(Net(text_format.Parse(NET, caffe_pb2.NetParameter()), caffe_pb2.TEST), **options)


def test_imagenet_mean_sets_caffes_256_by_256(shared_data):
    from trainer.classify import load_image
    mean = read_mean(shared_data / "means" / "imagenet_mean.binaryproto")
    photo = load_image(shared_data / "photos" / "fish-bike.jpg", color=True)
    clf = classifier(mean=mean)
    assert clf.image_dims == (256, 256)          # classify.py's --images_dim default
    explicit = classifier(mean=mean, image_dims=(256, 256)).predict([photo])
    np.testing.assert_array_equal(clf.predict([photo]), explicit)
    # resized to the crop itself, the four corners would all be the centre: not Caffe's 10 crops
    assert not np.allclose(explicit, classifier(mean=mean, image_dims=(227, 227)).predict([photo]))


def test_no_mean_image_or_a_smaller_one_keeps_the_net_input_size():
    assert classifier().image_dims == (227, 227)
    assert classifier(mean=np.array([104.0, 117.0, 123.0])).image_dims == (227, 227)
    assert classifier(mean=np.zeros((3, 8, 8), np.float32)).image_dims == (227, 227)
    assert classifier(mean=np.zeros((3, 300, 280), np.float32), image_dims=(240, 240)).image_dims == (240, 240)
    assert classifier(mean=np.zeros((3, 300, 280), np.float32)).image_dims == (300, 280)
