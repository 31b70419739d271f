"""Strided convolutions pad as the reference: stem and plain-ResNet conv2 explicitly before ('Caffe'), the
ResNeXt grouped conv2 like TF 'SAME' (after), TF_PAD_MODE always 'SAME'; checked against numpy convolutions."""
import numpy as np
import pytest

import trainer  # noqa: F401  (legacy Keras before TensorFlow)
import tensorflow as tf

from trainer.config import load_config
from trainer.model.backbone import ResNetBackbone

tf1 = tf.compat.v1


def numpy_conv(x, w, stride, pad_before, pad_after):
    """x [H, W, Cin], w [k, k, Cin, Cout]: zero padding, then a 'VALID' strided convolution."""
    k = w.shape[0]
    xp = np.pad(x, [(pad_before, pad_after), (pad_before, pad_after), (0, 0)])
    oh = (xp.shape[0] - k) // stride + 1
    ow = (xp.shape[1] - k) // stride + 1
    out = np.zeros((oh, ow, w.shape[3]))
    for i in range(oh):
        for j in range(ow):
            patch = xp[i * stride:i * stride + k, j * stride:j * stride + k]
            out[i, j] = np.tensordot(patch, w, axes=([0, 1, 2], [0, 1, 2]))
    return out


@pytest.mark.parametrize("tf_pad", [False, True])
@pytest.mark.parametrize("explicit,kernel", [(True, 3), (True, 7), (False, 3)])
@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
def test_strided_conv_padding(tf_pad, explicit, kernel, data_format):
    cfg = load_config(None, [f"BACKBONE.TF_PAD_MODE={str(tf_pad).lower()}", "BACKBONE.NORM=None"])
    backbone = ResNetBackbone(cfg, data_format)
    rng = np.random.RandomState(0)
    x = rng.normal(size=(16, 16, 4)).astype(np.float32)
    w = rng.normal(size=(kernel, kernel, 4, 5)).astype(np.float32)
    with tf.Graph().as_default(), tf1.Session() as sess:
        inp = tf.constant(x[None] if data_format == "NHWC" else x.transpose(2, 0, 1)[None])
        y = backbone._conv("c", inp, 5, kernel, stride=2, relu=False, explicit_pad=explicit)
        var = [v for v in tf1.global_variables() if v.op.name == "c/W"][0]
        var.load(w, sess)
        out = sess.run(y)[0]
    if data_format == "NCHW":
        out = out.transpose(1, 2, 0)
    if explicit and not tf_pad:  # k//2 before, k//2 - 1 after
        expected = numpy_conv(x, w, 2, kernel // 2, kernel // 2 - 1)
    else:  # TF 'SAME' on an even size: (k - 2) // 2 before, the rest after
        total = kernel - 2
        expected = numpy_conv(x, w, 2, total // 2, total - total // 2)
    assert out.shape == expected.shape == (8, 8, 5)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_resnext_block_uses_same_padding_and_resnet_block_explicit():
    """Which convs pad explicitly is the reference's choice, per bottleneck type (their first divergence)."""
    seen = {}
    for bottleneck in ("resnet", "resnext_32xd4"):
        cfg = load_config(None, [f"BACKBONE.BOTTLENECK={bottleneck}", "BACKBONE.NORM=None"])
        with tf.Graph().as_default() as g:
            ResNetBackbone(cfg, "NHWC")(tf1.placeholder(tf.float32, [1, 64, 64, 3]))
            pads = [op.name for op in g.get_operations() if op.type in ("Pad", "PadV2")]
        seen[bottleneck] = pads
    strided = [f"group{g}/block0/Pad" for g in (1, 2, 3)]  # the explicit pad before a block's strided conv2
    assert all(n in seen["resnet"] for n in strided)
    assert not any(n in seen["resnext_32xd4"] for n in strided)
    assert all(sum(1 for n in p if "/" not in n) == 2 for p in seen.values())  # the stem (conv0, pool0) in both
