"""VGG-16 for CIFAR, the network-slimming variant (Liu et al. 2017): 13 conv3x3-BN-ReLU layers,
four 2x2 max-pools, a final 2x2 average pool and one linear classifier."""
from __future__ import annotations

from torch import Tensor, nn

CFG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


def make_features(cfg: list, bias: bool) -> tuple[nn.Sequential, int]:
    """VGG's conv3x3-BN-ReLU stack ("M": a 2x2 max pool) and its output channels."""
    layers: list[nn.Module] = []
    c = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, 1, 1, bias=bias), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers), c


class VGGCifar(nn.Module):
    def __init__(self, cfg: list = CFG16, num_classes: int = 10):
        super().__init__()
        self.features, c = make_features(cfg, bias=False)
        self.pool = nn.AvgPool2d(2)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.features(x))
        return self.classifier(x.flatten(1))  # (B, 512)


def vgg16_cifar(num_classes: int = 10) -> VGGCifar:
    return VGGCifar(CFG16, num_classes)
