"""Helpers shared by the engine and deployment tests."""
from __future__ import annotations

import torch
from torch import nn

from dyninfer import ArchitectureControl


def randomize(model: nn.Module, seed: int = 0, bn: bool = True) -> nn.Module:
    """Random BN statistics (unless ``bn=False``) and gates that keep roughly half of the channels,
    input-dependently."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if bn and isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
        if isinstance(m, ArchitectureControl):
            m.fc1.weight.data.copy_(torch.randn(m.fc1.weight.shape, generator=g))
            m.fc2.weight.data.copy_(torch.randn(m.fc2.weight.shape, generator=g))
            m.fc2.bias.data.copy_(torch.randn(m.fc2.bias.shape, generator=g) * 0.5)
    return model.eval()
