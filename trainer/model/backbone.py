"""ResNet / ResNeXt-32x4d bottleneck backbone producing C2-C5 for the FPN.

Input: normalised, padded image ``[1, 3, H, W]`` (NCHW) or ``[1, H, W, 3]``
(NHWC), H and W multiples of 32. Output: ``[C2, C3, C4, C5]`` at strides 4,
8, 16, 32 with ``4 * width`` channels each (widths ``64, 128, 256, 512`` x
``BACKBONE.WIDTH_MULT``).

Config read: ``BACKBONE.BOTTLENECK`` (``resnet``: conv1 1x1 ch, conv2 3x3 ch,
conv3 1x1 4ch; ``resnext_32xd4``: conv1 1x1 2ch, conv2 3x3 2ch in 32 groups,
conv3 1x1 4ch; the stride sits on conv2), ``BACKBONE.RESNET_NUM_BLOCKS``,
``BACKBONE.NORM``, ``BACKBONE.FREEZE_AT`` (0 train all, 1 freeze conv0, 2 also
group0, ...), ``BACKBONE.FREEZE_AFFINE``, ``BACKBONE.TF_PAD_MODE``,
``BACKBONE.WIDTH_MULT``.

Variables: ``conv0/W``, ``conv0/{gn,bn}/*``,
``group{g}/block{i}/conv{1,2,3}/W`` + norm, ``group{g}/block0/convshortcut/W``
+ norm (tensorpack's names, so the published checkpoints load).
"""
import contextlib

import tensorflow as tf

from trainer.model.layers import conv2d, num_channels
from trainer.model.norm import normalize

tf1 = tf.compat.v1

GROUP_WIDTHS = (64, 128, 256, 512)
STEM_WIDTH = 64
RESNEXT_GROUPS = 32


@contextlib.contextmanager
def trainability(freeze_all, freeze_affine):
    """Variables created inside are non-trainable (``freeze_all``) or have non-trainable gamma/beta.

    Frozen variables are kept out of the trainable collection (so the
    optimizer and weight decay skip them); gradients still flow through.
    """
    def getter(getter, *args, **kwargs):
        name = kwargs["name"] if "name" in kwargs else args[0]
        if freeze_all or (freeze_affine and name.rsplit("/", 1)[-1] in ("gamma", "beta")):
            kwargs["trainable"] = False
        return getter(*args, **kwargs)

    if not freeze_all and not freeze_affine:
        yield
        return
    with tf1.variable_scope(tf1.get_variable_scope(), custom_getter=getter, auxiliary_name_scope=False):
        yield


def _pad_hw(x, data_format, before, after):
    pads = [[0, 0], [0, 0], [before, after], [before, after]] if data_format == "NCHW" else \
        [[0, 0], [before, after], [before, after], [0, 0]]
    return tf.pad(x, pads)


class ResNetBackbone:
    """Callable ``image -> [C2, C3, C4, C5]``; see the module docstring."""

    def __init__(self, cfg, data_format):
        b = cfg.BACKBONE
        self.data_format = data_format
        self.norm = b.NORM
        self.num_blocks = list(b.RESNET_NUM_BLOCKS)
        self.freeze_at = int(b.FREEZE_AT)
        self.freeze_affine = bool(b.FREEZE_AFFINE)
        self.tf_pad = bool(b.TF_PAD_MODE)
        self.resnext = b.BOTTLENECK == "resnext_32xd4"
        self.widths = [int(round(w * b.WIDTH_MULT)) for w in GROUP_WIDTHS]
        self.stem_width = int(round(STEM_WIDTH * b.WIDTH_MULT))

    def _conv(self, name, x, out, kernel, stride=1, groups=1, relu=True, zero_init=False, explicit_pad=True):
        """Conv (no bias) + norm (+ ReLU).

        Strided convs with ``explicit_pad`` (unless ``TF_PAD_MODE``) pad
        ``k//2`` before and ``k//2 - 1`` after, then run 'VALID' (the layout of
        Caffe-trained ImageNet models); otherwise TF 'SAME', which pads after.
        Which convs pad explicitly is the reference's choice, layer by layer:
        conv0 and the plain ResNet bottleneck's strided conv2 do, the ResNeXt
        bottleneck's grouped conv2 and the 1x1 shortcuts do not.
        """
        padding = "SAME"
        if explicit_pad and stride > 1 and kernel > 1 and not self.tf_pad:
            x = _pad_hw(x, self.data_format, kernel // 2, kernel // 2 - 1)
            padding = "VALID"

        def activation(y):
            y = normalize(self.norm, y, self.data_format, zero_init=zero_init)
            return tf.nn.relu(y) if relu else y

        return conv2d(name, x, out, kernel, self.data_format, stride=stride, groups=groups, padding=padding,
                      activation=activation)

    def _bottleneck(self, x, ch, stride):
        if self.resnext:
            y = self._conv("conv1", x, 2 * ch, 1)
            y = self._conv("conv2", y, 2 * ch, 3, stride=stride, groups=RESNEXT_GROUPS, explicit_pad=False)
        else:
            y = self._conv("conv1", x, ch, 1)
            y = self._conv("conv2", y, ch, 3, stride=stride)
        # zero-init last gamma: each residual block starts as the identity
        y = self._conv("conv3", y, 4 * ch, 1, relu=False, zero_init=True)
        shortcut = x
        if num_channels(x, self.data_format) != 4 * ch:
            shortcut = self._conv("convshortcut", x, 4 * ch, 1, stride=stride, relu=False)
        return tf.nn.relu(y + shortcut, name="output")

    def _stem(self, image):
        x = self._conv("conv0", image, self.stem_width, 7, stride=2)
        if self.tf_pad:
            return tf.nn.max_pool2d(x, 3, 2, "SAME", data_format=self.data_format)
        x = _pad_hw(x, self.data_format, 1, 0)
        return tf.nn.max_pool2d(x, 3, 2, "VALID", data_format=self.data_format)

    def __call__(self, image):
        with trainability(self.freeze_at > 0, self.freeze_affine):
            x = self._stem(image)
        features = []
        for g, (count, ch) in enumerate(zip(self.num_blocks, self.widths)):
            with trainability(self.freeze_at > g + 1, self.freeze_affine), tf1.variable_scope(f"group{g}"):
                for i in range(count):
                    with tf1.variable_scope(f"block{i}"):
                        x = self._bottleneck(x, ch, (1 if g == 0 else 2) if i == 0 else 1)
            features.append(x)
        return features
