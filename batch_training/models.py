"""Model architectures for image classification, each a function returning a ``keras.Model``.

Inputs are images already put through ``streaming.imaging.preprocessing.preprocess``
(shape ``(height, width, channels)``, normalized): no preprocessing layers live in
the models, so serving feeds them exactly what training did. Outputs are softmax
probabilities over ``num_classes``, in the order of the metadata's ``classes``.

Only ``keras`` is used, never a backend directly: a model trained on TensorFlow
loads and predicts on JAX (GPU workers) unchanged.
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras
from keras import layers

INPUT_NAME = "image"
OUTPUT_NAME = "class_probabilities"
# BatchNorm's moving variance starts at 1 and forgets that start by `momentum` per step.
# With Keras' default 0.99 (and still at 0.9) a few hundred images x a few epochs leave
# it far above the small variance of [0, 1] images, and inference-mode predictions
# collapse to one class (seen on phantoms: train AUC 0.99, validation AUC 0.5).
BN_MOMENTUM = 0.8


def _classifier_head(features, num_classes: int, dropout: float):
    """Global pooling, dropout and a softmax over the classes.

    The softmax is kept in float32 so mixed-precision runs still emit probabilities
    that sum to one and compare cleanly with thresholds.
    """
    x = layers.GlobalAveragePooling2D(name="pool")(features)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(num_classes, activation="softmax", dtype="float32",
                        name=OUTPUT_NAME)(x)


def _batch_norm(name: str):
    return layers.BatchNormalization(momentum=BN_MOMENTUM, name=name)


def _conv_bn_relu(x, filters: int, name: str, strides: int = 1):
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                      name=f"{name}_conv")(x)
    x = _batch_norm(f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def compact_cnn(input_shape: Sequence[int], num_classes: int, *,
                filters: Sequence[int] = (16, 32, 64), dropout: float = 0.3) -> keras.Model:
    """The default: a few conv blocks, small enough to train on two CPU cores.

    ``input_shape``: (height, width, channels), height and width >= 28 (three
    2x poolings leave at least 3x3 features). Returns a model mapping a batch of
    images to class probabilities, shape (batch, num_classes).
    """
    inputs = keras.Input(shape=tuple(input_shape), name=INPUT_NAME)
    x = inputs
    for block, width in enumerate(filters, start=1):
        x = _conv_bn_relu(x, width, name=f"block{block}a")
        x = _conv_bn_relu(x, width, name=f"block{block}b")
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    outputs = _classifier_head(x, num_classes, dropout)
    return keras.Model(inputs, outputs, name="compact_cnn")


def _residual_block(x, filters: int, name: str, strides: int = 1):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False,
                                 name=f"{name}_proj_conv")(x)
        shortcut = _batch_norm(f"{name}_proj_bn")(shortcut)
    y = _conv_bn_relu(x, filters, name=f"{name}_1", strides=strides)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    y = _batch_norm(f"{name}_2_bn")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_out")(y)


def residual_net(input_shape: Sequence[int], num_classes: int, *,
                 stage_filters: Sequence[int] = (32, 64, 128), blocks_per_stage: int = 2,
                 dropout: float = 0.2) -> keras.Model:
    """A small ResNet-style network (ResNet-18's shape, narrower and shallower).

    ``input_shape``: (height, width, channels), height and width >= 28. Each stage
    after the first halves the resolution. Returns class probabilities.
    """
    inputs = keras.Input(shape=tuple(input_shape), name=INPUT_NAME)
    x = _conv_bn_relu(inputs, stage_filters[0], name="stem")
    for stage, width in enumerate(stage_filters, start=1):
        for block in range(1, blocks_per_stage + 1):
            strides = 2 if stage > 1 and block == 1 else 1
            x = _residual_block(x, width, name=f"stage{stage}_block{block}", strides=strides)
    outputs = _classifier_head(x, num_classes, dropout)
    return keras.Model(inputs, outputs, name="residual_net")


def resnet50(input_shape: Sequence[int] = (224, 224, 3), num_classes: int = 2) -> keras.Model:
    """Keras' ResNet-50 body, randomly initialized, with a softmax head.

    ``weights=None`` so nothing is downloaded at run time (hospital networks and
    workers are often offline). Used by the throughput benchmark and for large inputs.
    """
    inputs = keras.Input(shape=tuple(input_shape), name=INPUT_NAME)
    body = keras.applications.ResNet50(weights=None, include_top=False,
                                       input_shape=tuple(input_shape))
    outputs = _classifier_head(body(inputs), num_classes, dropout=0.0)
    return keras.Model(inputs, outputs, name="resnet50")


ARCHITECTURES: dict[str, Callable[..., keras.Model]] = {
    "compact_cnn": compact_cnn,
    "residual_net": residual_net,
    "resnet50": resnet50,
}


def build_model(architecture: str, input_shape: Sequence[int], num_classes: int) -> keras.Model:
    """The named architecture for ``input_shape`` (H, W, C) and ``num_classes`` outputs."""
    try:
        builder = ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of "
                         f"{', '.join(sorted(ARCHITECTURES))}") from None
    return builder(tuple(input_shape), num_classes)


def explained_layer_name(model: keras.Model) -> str:
    """The layer an explanation (Grad-CAM) should look at: the last 4-D (spatial)
    feature map before the global pooling, where each cell still has a place in the
    image and the class decision is a weighted sum over cells."""
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None)
        shape = getattr(shape, "shape", None)
        if shape is not None and len(shape) == 4 and not isinstance(layer, keras.layers.InputLayer):
            if isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
                continue
            return layer.name
    raise ValueError(f"{model.name} has no spatial feature map to explain")

