"""EfficientNet-B0 (Tan & Le, 2019) for ImageNet (224x224): MBConv blocks of a 1x1 expansion, a
depthwise 3x3 or 5x5 conv, squeeze-and-excitation (SiLU inside, sigmoid gate) and a linear 1x1
projection, SiLU everywhere; the module layout follows torchvision's. Stochastic depth (training
only) is left out: it has no parameters and is the identity at inference."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .mobilenet import SqueezeExcitation, init_mobile_weights


def conv_bn_silu(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout, eps=1e-3)]
    if act:
        layers.append(nn.SiLU(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_silu(cin, hidden))
        layers += [conv_bn_silu(hidden, hidden, k, stride, groups=hidden), SqueezeExcitation(hidden, max(1, cin // 4), nn.SiLU, nn.Sigmoid),
                   conv_bn_silu(hidden, cout, act=False)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        return y + x if self.use_res else y


class EfficientNet(nn.Module):
    B0 = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
          (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [conv_bn_silu(3, 32, 3, 2)]
        for expand, k, stride, cin, cout, n in self.B0:
            layers.append(nn.Sequential(*[MBConv(cin if i == 0 else cout, cout, k, stride if i == 0 else 1, expand)
                                          for i in range(n)]))
        layers.append(conv_bn_silu(320, 1280))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2, inplace=True), nn.Linear(1280, num_classes))
        init_mobile_weights(self, linear="uniform")

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def efficientnet_b0(num_classes: int = 1000) -> EfficientNet:
    return EfficientNet(num_classes)
