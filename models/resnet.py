"""Residual networks for 32×32 images: the CIFAR ResNet-20 and the CIFAR variant of ResNet-18.

Both follow He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition" (CVPR 2016):
stacks of BasicBlocks, y = ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x)), a 3×3 stem, global
average pooling and one linear classifier. State-dict keys follow the widely used CIFAR code
(conv1, bn1, layerN.i.conv1/bn1/conv2/bn2/shortcut), with the last layer named `classifier`
as every PruneScope model names it.

Analysis layers are the stage outputs (each ends in its last block's ReLU, so the captured map
is what the next stage reads), the pooled features `pool` (what the classifier reads) and the
logits `classifier`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunescope.models.configs import ResNet18Config, ResNet20Config
from prunescope.models.registration import register


class ZeroPadShortcut(nn.Module):
    """Option A shortcut of He et al. (2016): subsample by `stride`, zero-pad the new channels.

    Parameter-free, so the block's extra channels start at zero on the identity path. The
    padding is split between both ends of the channel axis as in the common CIFAR code.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = out_channels - in_channels
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))


class BasicBlock(nn.Module):
    """Two 3×3 conv + BN layers and a shortcut, ReLU after the sum (He et al. 2016, Fig. 2)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Sequential()  # identity where the shapes already agree
        if stride != 1 or in_channels != out_channels:
            if shortcut == "A":
                self.shortcut = ZeroPadShortcut(in_channels, out_channels, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                    nn.BatchNorm2d(out_channels),
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """3×3 stem (stride 1, no max-pool), stages of BasicBlocks, global average pool, linear.

    Each stage after the first halves the spatial size in its first block (stride 2) and
    doubles the width. The config gives the stage layout (`blocks_per_stage`) and the
    shortcut option; `configs.cifar_resnet_parameters` counts the parameters built here.
    """

    def __init__(self, config: ResNet20Config | ResNet18Config) -> None:
        super().__init__()
        self.config = config
        self.input_shape: tuple[int, ...] = config.input_shape
        width = config.base_width
        self.conv1 = nn.Conv2d(config.in_channels, width, 3, 1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stage_names = []
        for i, num_blocks in enumerate(config.blocks_per_stage):
            out = config.base_width * 2**i
            strides = [1 if i == 0 else 2] + [1] * (num_blocks - 1)
            blocks = []
            for stride in strides:
                blocks.append(BasicBlock(width, out, stride, config.shortcut))
                width = out
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            stage_names.append(f"layer{i + 1}")
        self.stage_names = tuple(stage_names)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(width, config.num_classes)
        self.analysis_layers: tuple[str, ...] = (*stage_names, "pool", "classifier")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He et al. (2015) initialisation, the one the ResNet paper trains from.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.classifier(self.pool(x))


# ----------------------------------------------------------------------------------- resnet20


@register("resnet20")
class ResNet20(CifarResNet):
    """ResNet-20 for CIFAR (He et al. 2016, Sec. 4.2): 6n+2 layers with n = 3.

    Three stages of three BasicBlocks at base_width × (1, 2, 4) channels (16/32/64), on
    32×32 → 16×16 → 8×8 maps; 0.27 M parameters (the paper's Table 6).

    Shortcut option A (zero-padding identity) by default, because it is what the paper uses on
    CIFAR ("we use identity shortcuts in all cases (i.e., option A)") and the 0.27 M of Table 6
    are counted with it; it also keeps every prunable weight on the residual branch, so pruning
    can never cut a shortcut. `shortcut="B"` (1×1 conv + BN projection where the shape changes,
    +2.7 k parameters) fits checkpoints trained with that variant.
    """

    config_class = ResNet20Config


# ----------------------------------------------------------------------------------- resnet18


@register("resnet18")
class ResNet18(CifarResNet):
    """ResNet-18 (He et al. 2016, Table 1) adapted to 32×32 inputs as commonly done for CIFAR.

    The ImageNet stem (7×7 stride-2 conv and 3×3 max-pool) becomes one 3×3 stride-1 conv, so
    the four stages of two BasicBlocks at 64/128/256/512 channels see 32/16/8/4-pixel maps.
    Shortcuts are option B (1×1 conv + BN projection where the shape changes), as in the
    ImageNet ResNet-18; 11.17 M parameters with 10 classes.
    """

    config_class = ResNet18Config
