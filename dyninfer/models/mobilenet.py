"""MobileNetV2 (Sandler et al., 2018) and MobileNetV3-Small (Howard et al., 2019) for ImageNet
(224x224): inverted residual blocks of a 1x1 expansion, a depthwise conv and a linear 1x1
projection (ReLU6; V3: Hardswish or ReLU and squeeze-and-excitation); parameter names as in the
common torchvision layout. MobileNetV2's ``width_mult`` and ``small_input`` (stride 1 stem for
32x32) make smaller variants."""
from __future__ import annotations

from torch import Tensor, nn


def init_mobile_weights(model: nn.Module, linear: str = "normal") -> None:
    """torchvision's init of its mobile families: convs Kaiming-normal (fan out) with zero bias;
    Linear layers N(0, 0.01) (``linear="normal"``: MobileNetV2/V3) or U(±1/√out) (``"uniform"``:
    EfficientNet), zero bias."""
    if linear not in ("normal", "uniform"):
        raise ValueError(f"init_mobile_weights: linear must be 'normal' or 'uniform', got {linear!r}")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear == "normal":
                nn.init.normal_(m.weight, 0, 0.01)
            else:
                r = 1.0 / m.out_features ** 0.5
                nn.init.uniform_(m.weight, -r, r)
            nn.init.zeros_(m.bias)


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvBNReLU6(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = int(round(cin * expand))
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU6(cin, hidden, k=1))
        layers += [ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, small_input: bool = False):
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU6(3, cin, stride=1 if small_input else 2)]
        for t, c, n, s in self.SETTINGS:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                stride = s if i == 0 else 1
                if small_input and c == 24:
                    stride = 1  # CIFAR-size inputs keep 32x32 two stages longer
                features.append(InvertedResidual(cin, cout, stride, t))
                cin = cout
        features.append(ConvBNReLU6(cin, last, k=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        init_mobile_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(x.flatten(1))


def mobilenet_v2(num_classes: int = 1000) -> MobileNetV2:
    return MobileNetV2(num_classes)


def mobilenet_v2_cifar(num_classes: int = 10) -> MobileNetV2:
    return MobileNetV2(num_classes, width_mult=0.5, small_input=True)


class SqueezeExcitation(nn.Module):
    """x * scale_activation(fc2(activation(fc1(GAP(x))))), the FCs as 1x1 convs (torchvision's
    layout): ReLU and Hardsigmoid in MobileNetV3, SiLU and Sigmoid in EfficientNet."""

    def __init__(self, channels: int, squeeze: int, activation: type = nn.ReLU,
                 scale_activation: type = nn.Hardsigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: type | None = None):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(cout, eps=0.001, momentum=0.01)]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class InvertedResidualV3(nn.Module):
    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, act: type, stride: int):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(ConvBNAct(cin, exp, 1, act=act))
        layers.append(ConvBNAct(exp, exp, k, stride, groups=exp, act=act))
        if se:
            layers.append(SqueezeExcitation(exp, _make_divisible(exp // 4, 8)))
        layers.append(ConvBNAct(exp, cout, 1))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        return y + x if self.use_res else y


class MobileNetV3(nn.Module):
    """MobileNetV3-Small (Howard et al., 2019): Hardswish, squeeze-and-excitation, 5x5 depthwise
    convs, a Linear-Hardswish-Dropout-Linear head; parameter names as in torchvision."""

    SMALL = ((16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2), (24, 3, 88, 24, False, "RE", 1),
             (24, 5, 96, 40, True, "HS", 2), (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
             (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1), (48, 5, 288, 96, True, "HS", 2),
             (96, 5, 576, 96, True, "HS", 1), (96, 5, 576, 96, True, "HS", 1))

    def __init__(self, num_classes: int = 1000, last_channel: int = 1024):
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(3, 16, 3, 2, act=nn.Hardswish)]
        for cin, k, exp, cout, se, act, stride in self.SMALL:
            layers.append(InvertedResidualV3(cin, k, exp, cout, se, nn.Hardswish if act == "HS" else nn.ReLU, stride))
        layers.append(ConvBNAct(96, 576, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(576, last_channel), nn.Hardswish(inplace=True), nn.Dropout(0.2),
                                        nn.Linear(last_channel, num_classes))
        init_mobile_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(x.flatten(1))


def mobilenet_v3_small(num_classes: int = 1000) -> MobileNetV3:
    return MobileNetV3(num_classes)
