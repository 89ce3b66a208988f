"""Model registry: create_model(name, num_classes, gated) and list_models().

Every model is defined dense with plain nn.Conv2d / BatchNorm2d / ReLU (ReLU6) modules; the gated variant
is ``decouple(dense)``, so dense and gated models share parameter names and a dense checkpoint
initialises the gated model (only the ``*_gate`` parameters are new).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..nn import decouple
from .cifar_resnet import resnet20, resnet32, resnet56, resnet110
from .classic import densenet121, squeezenet1_1, vgg11_bn
from .efficientnet import efficientnet_b0
from .googlenet import googlenet_cifar
from .mobilenet import mobilenet_v2, mobilenet_v2_cifar, mobilenet_v3_small
from .resnet_bottleneck import resnet50, resnext50_32x4d
from .resnet_imagenet import resnet18
from .vgg import vgg16_cifar

__all__ = ["create_model", "list_models", "model_info", "ModelInfo"]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int, int]  # (C, H, W) the model is designed for
    dataset: str


_REGISTRY: dict[str, ModelInfo] = {
    m.name: m
    for m in [
        ModelInfo("resnet20", resnet20, (3, 32, 32), "cifar"),
        ModelInfo("resnet32", resnet32, (3, 32, 32), "cifar"),
        ModelInfo("resnet56", resnet56, (3, 32, 32), "cifar"),
        ModelInfo("resnet110", resnet110, (3, 32, 32), "cifar"),
        ModelInfo("vgg16_cifar", vgg16_cifar, (3, 32, 32), "cifar"),
        ModelInfo("googlenet_cifar", googlenet_cifar, (3, 32, 32), "cifar"),
        ModelInfo("resnet18", resnet18, (3, 224, 224), "imagenet"),
        ModelInfo("resnet50", resnet50, (3, 224, 224), "imagenet"),
        ModelInfo("resnext50_32x4d", resnext50_32x4d, (3, 224, 224), "imagenet"),
        ModelInfo("mobilenet_v2", mobilenet_v2, (3, 224, 224), "imagenet"),
        ModelInfo("mobilenet_v2_cifar", mobilenet_v2_cifar, (3, 32, 32), "cifar"),
        ModelInfo("mobilenet_v3_small", mobilenet_v3_small, (3, 224, 224), "imagenet"),
        ModelInfo("vgg11_bn", vgg11_bn, (3, 224, 224), "imagenet"),
        ModelInfo("squeezenet1_1", squeezenet1_1, (3, 224, 224), "imagenet"),
        ModelInfo("densenet121", densenet121, (3, 224, 224), "imagenet"),
        ModelInfo("efficientnet_b0", efficientnet_b0, (3, 224, 224), "imagenet"),
    ]
}


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model '{name}'; registered models: {', '.join(list_models())}") from None


def create_model(name: str, num_classes: int = 10, gated: bool = True, reduction: int = 4) -> nn.Module:
    """Build a registered model; ``gated=True`` returns ``decouple(dense, reduction)``."""
    if num_classes < 1:
        raise ValueError(f"create_model('{name}'): num_classes must be >= 1, got {num_classes}")
    model = model_info(name).builder(num_classes=num_classes)
    if gated:
        model = decouple(model, reduction=reduction)
    model.dyninfer_name = name
    return model
