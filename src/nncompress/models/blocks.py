"""Efficient convolution blocks: depthwise separable (MobileNet, Howard et al. 2017),
grouped 1x1 + channel shuffle (ShuffleNet v1, Zhang et al. 2018), fire module (SqueezeNet,
Iandola et al. 2016) and the 1x1 bottleneck (ResNet-50, He et al. 2016).

Cost of each block for ``C`` input and ``O`` output channels on an ``H x W`` output (MACs;
weights are the same without the ``H*W`` factor), against a standard 3x3 conv ``9*C*O*H*W``:

* ``DepthwiseSeparable``: ``(9*C + C*O)*H*W``, ratio ``1/O + 1/9``;
* ``ShuffleUnit`` (mid ``M``, ``g`` groups): ``C*M/g`` (at the input size) ``+ 9*M + M*O'/g``;
* ``Fire`` (squeeze ``S``, expands ``E1``, ``E3``): ``C*S + S*E1 + 9*S*E3``;
* ``Bottleneck`` (mid ``M``): ``C*M + 9*M*M + M*O`` (+ ``C*O`` for a projection).
"""

from __future__ import annotations

import torch
from torch import nn

from nncompress.errors import ConfigError
from nncompress.models.resnet import projection_shortcut


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _check_stride(stride: int) -> None:
    if stride not in (1, 2):
        raise ConfigError(f"stride must be 1 or 2, got {stride!r}")


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv (``groups=in_ch``) + BN + ReLU, then 1x1 pointwise + BN + ReLU.

    Weights: ``9*in_ch + in_ch*out_ch`` conv + ``2*(in_ch + out_ch)`` BN affine.

    Example:
        >>> DepthwiseSeparable(8, 16, stride=2)(torch.zeros(1, 8, 28, 28)).shape
        torch.Size([1, 16, 14, 14])
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        _check_positive(in_ch=in_ch, out_ch=out_ch)
        _check_stride(stride)
        self.depthwise = nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=False)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.depthwise(x)))  # (B, C, H/s, W/s)
        return torch.relu(self.bn2(self.pointwise(x)))  # (B, O, H/s, W/s)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups: output channel ``j*groups + i`` is
    input channel ``i*(C//groups) + j``. Shuffling with ``C//groups`` groups undoes it.

    Example:
        >>> channel_shuffle(torch.arange(6.0).view(1, 6, 1, 1), 2).flatten().tolist()
        [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    """
    _check_positive(groups=groups)
    b, c, h, w = x.shape
    if c % groups:
        raise ConfigError(f"channel_shuffle: {c} channels are not divisible by groups={groups}")
    x = x.view(b, groups, c // groups, h, w)  # (B, g, C/g, H, W)
    return x.transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W), groups interleaved


class ShuffleUnit(nn.Module):
    """ShuffleNet v1 unit: grouped 1x1 (in -> mid) + BN + ReLU, channel shuffle, 3x3
    depthwise (stride) + BN, grouped 1x1 (mid -> branch) + BN; then ``relu(x + branch)``
    for stride 1 (``in_ch == out_ch``) or ``relu(cat(avgpool3x3(x), branch))`` for stride 2
    (branch has ``out_ch - in_ch`` channels). ``mid_ch`` defaults to ``out_ch // 4``.

    Example:
        >>> ShuffleUnit(24, 96, groups=3, stride=2)(torch.zeros(1, 24, 28, 28)).shape
        torch.Size([1, 96, 14, 14])
    """

    def __init__(self, in_ch: int, out_ch: int, groups: int = 3, stride: int = 1,
                 mid_ch: int | None = None):
        super().__init__()
        mid_ch = out_ch // 4 if mid_ch is None else mid_ch
        _check_positive(in_ch=in_ch, out_ch=out_ch, groups=groups, mid_ch=mid_ch)
        _check_stride(stride)
        if stride == 1 and in_ch != out_ch:
            raise ConfigError(f"ShuffleUnit with stride 1 adds the input: in_ch ({in_ch}) must "
                              f"equal out_ch ({out_ch})")
        if stride == 2 and out_ch <= in_ch:
            raise ConfigError(f"ShuffleUnit with stride 2 concatenates the input: out_ch ({out_ch}) "
                              f"must exceed in_ch ({in_ch})")
        branch_ch = out_ch if stride == 1 else out_ch - in_ch
        for name, ch in (("in_ch", in_ch), ("mid_ch", mid_ch), ("branch channels", branch_ch)):
            if ch % groups:
                raise ConfigError(f"ShuffleUnit: {name} = {ch} is not divisible by groups={groups}; "
                                  f"use a multiple of {groups}")
        self.groups, self.stride = groups, stride
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_ch)
        self.depthwise = nn.Conv2d(mid_ch, mid_ch, 3, stride, 1, groups=mid_ch, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_ch)
        self.conv3 = nn.Conv2d(mid_ch, branch_ch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))  # (B, M, H, W)
        out = channel_shuffle(out, self.groups)
        out = self.bn2(self.depthwise(out))  # (B, M, H/s, W/s)
        out = self.bn3(self.conv3(out))  # (B, O or O-C, H/s, W/s)
        if self.stride == 1:
            return torch.relu(x + out)
        pooled = nn.functional.avg_pool2d(x, 3, 2, 1)  # (B, C, H/2, W/2)
        return torch.relu(torch.cat([pooled, out], dim=1))  # (B, O, H/2, W/2)


class Fire(nn.Module):
    """SqueezeNet fire module: 1x1 squeeze + ReLU, then 1x1 and 3x3 expands (+ ReLU)
    concatenated. Output channels: ``expand1x1 + expand3x3``. As in the paper the convs
    carry biases and there is no BN; ``batch_norm=True`` puts BN after each conv instead of
    the bias (a deep stack of fire modules then trains with plain SGD from default init).

    Example:
        >>> Fire(16, 8, 16, 16)(torch.zeros(1, 16, 14, 14)).shape
        torch.Size([1, 32, 14, 14])
    """

    def __init__(self, in_ch: int, squeeze: int, expand1x1: int, expand3x3: int,
                 batch_norm: bool = False):
        super().__init__()
        _check_positive(in_ch=in_ch, squeeze=squeeze, expand1x1=expand1x1, expand3x3=expand3x3)
        bias = not batch_norm
        self.squeeze = nn.Conv2d(in_ch, squeeze, 1, bias=bias)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1, bias=bias)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1, bias=bias)
        norm = nn.BatchNorm2d if batch_norm else (lambda _: nn.Identity())
        self.bn_squeeze, self.bn1x1, self.bn3x3 = norm(squeeze), norm(expand1x1), norm(expand3x3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.bn_squeeze(self.squeeze(x)))  # (B, S, H, W)
        e1 = torch.relu(self.bn1x1(self.expand1x1(s)))  # (B, E1, H, W)
        e3 = torch.relu(self.bn3x3(self.expand3x3(s)))  # (B, E3, H, W)
        return torch.cat([e1, e3], dim=1)  # (B, E1 + E3, H, W)


class Bottleneck(nn.Module):
    """1x1 reduce (in -> mid) + BN + ReLU, 3x3 (stride) + BN + ReLU, 1x1 expand (mid -> out)
    + BN, added to the input (identity, or a 1x1 conv + BN projection when the stride or
    channel count changes), then ReLU.

    Example:
        >>> Bottleneck(32, 8, 64, stride=2)(torch.zeros(1, 32, 14, 14)).shape
        torch.Size([1, 64, 7, 7])
    """

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        _check_positive(in_ch=in_ch, mid_ch=mid_ch, out_ch=out_ch)
        _check_stride(stride)
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_ch)
        self.conv2 = nn.Conv2d(mid_ch, mid_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_ch)
        self.conv3 = nn.Conv2d(mid_ch, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = projection_shortcut(in_ch, out_ch, stride)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch (everything but the shortcut), before the add."""
        out = torch.relu(self.bn1(self.conv1(x)))  # (B, M, H, W)
        out = torch.relu(self.bn2(self.conv2(out)))  # (B, M, H/s, W/s)
        return self.bn3(self.conv3(out))  # (B, O, H/s, W/s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.branch(x) + self.shortcut(x))
