"""Small layers the model zoo needs that PyTorch lacks as modules."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .decouple import register_leaf_module


@register_leaf_module
class ShortcutA(nn.Module):
    """ResNet option-A shortcut (He et al. 2016, CIFAR): subsample by ``stride`` and zero-pad
    channels on both sides: (B, C, H, W) -> (B, C + 2·pad, H/stride, W/stride). No parameters."""

    def __init__(self, stride: int, pad_channels: int):
        super().__init__()
        self.stride = stride
        self.pad_channels = pad_channels

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        p = self.pad_channels
        return F.pad(x, (0, 0, 0, 0, p, p))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad_channels={self.pad_channels}"
