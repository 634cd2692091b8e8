"""The registry networks' configurations, without torch: frozen dataclasses that check their values.

Each network module (`small`, `resnet`, `vit`) builds its `nn.Module` from one of these, and the
web server reads them through `prunescope.models.architectures` to validate a project's
configuration, to know what a dataset must match and how large the model would be — all without
building it. So every config here also says, from its values alone:

- `input_shape`: the shape of one example the network reads (without the batch dimension),
- `num_classes`: how many class scores it outputs,
- `parameter_count()`: how many parameters (`sum(p.numel() for p in model.parameters())`) the
  network built from it has, exactly; a test checks each against the built model.

Each config also bounds its sizes (`SIZE_LIMITS`, checked by `check_size_limits` once the
parameter count is known to be within its limit): the registry networks are research-sized,
and a width, depth or input no dataset PruneScope accepts could feed only costs memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

# ------------------------------------------------------------------------------ the checks

# Upper bounds on sizes. Inputs and classes match what an uploaded dataset may hold
# (`prunescope.workers.dataset_formats.DatasetLimits`: 4 Mi values per example, 10,000
# classes, images of 4096 px a side).
MAX_WIDTH = 8192  # units of a hidden layer, channels, embedding width
MAX_DEPTH = 256  # hidden layers, Transformer blocks
MAX_INPUT_VALUES = 4 * 1024 * 1024
MAX_IMAGE_SIDE = 4096
MAX_CLASSES = 10_000
MAX_TOKENS = 4096 + 1  # a ViT's patches and its CLS token: attention grows with their square


def positive_int(owner: str, key: str, value: Any) -> int:
    """`value` when it is an integer of at least 1; ValueError naming `owner.key` otherwise."""
    # bool is an int subclass; `True` hidden units is a typo, not a size.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}.{key} must be a positive integer, got {value!r}")
    return value


def positive_ints(owner: str, key: str, value: Any, *, length: int | None = None) -> tuple:
    """`value` as a tuple of positive integers (of `length` entries when given)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{owner}.{key} must be a list of positive integers, got {value!r}")
    if length is not None and len(value) != length:
        raise ValueError(f"{owner}.{key} must have {length} entries, got {len(value)}")
    return tuple(positive_int(owner, key, v) for v in value)


def _linear(fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + fan_out  # weight and bias


def _conv(in_channels: int, out_channels: int, kernel: int, *, bias: bool = True) -> int:
    return in_channels * out_channels * kernel * kernel + (out_channels if bias else 0)


def _norm(width: int) -> int:
    return 2 * width  # BatchNorm's and LayerNorm's scale and shift (running stats are buffers)


def check_size_limits(owner: str, config: Any) -> None:
    """ValueError naming the first size of `config` past its upper bound (its class's
    `SIZE_LIMITS`, field → bound; a list field's bound applies to each entry, and a
    `max_length` entry bounds its length), or an input of more than MAX_INPUT_VALUES."""
    for key, bound in type(config).SIZE_LIMITS.items():
        if key.startswith("max_length:"):
            key = key.split(":", 1)[1]
            if len(getattr(config, key)) > bound:
                raise ValueError(f"{owner}.{key} may have at most {bound} entries, got "
                                 f"{len(getattr(config, key))}")
            continue
        value = getattr(config, key)
        for v in value if isinstance(value, tuple) else (value,):
            if v > bound:
                raise ValueError(f"{owner}.{key} must be at most {bound:,}, got {v:,}")
    values = 1
    for side in config.input_shape:
        values *= side
    if values > MAX_INPUT_VALUES:
        raise ValueError(f"{owner}'s input {tuple(config.input_shape)} has {values:,} values, "
                         f"more than the {MAX_INPUT_VALUES:,} a dataset example may hold")
    tokens = getattr(config, "num_tokens", 0)
    if tokens > MAX_TOKENS:
        raise ValueError(f"{owner} would attend over {tokens:,} tokens, more than "
                         f"{MAX_TOKENS:,}; use a larger patch_size or a smaller image_size")


# ---------------------------------------------------------------------------------------- mlp


@dataclass(frozen=True)
class MLPConfig:
    in_features: int = 64
    hidden: tuple[int, ...] = (128, 64)
    num_classes: int = 10

    SIZE_LIMITS = {"in_features": MAX_INPUT_VALUES, "hidden": MAX_WIDTH,
                   "max_length:hidden": MAX_DEPTH, "num_classes": MAX_CLASSES}

    def __post_init__(self) -> None:
        # Stored configs come back from JSON with lists; tuples keep configs comparable and
        # hashable. object.__setattr__ because the dataclass is frozen.
        for key in ("in_features", "num_classes"):
            object.__setattr__(self, key, positive_int("mlp", key, getattr(self, key)))
        object.__setattr__(self, "hidden", positive_ints("mlp", "hidden", self.hidden))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.in_features,)

    def parameter_count(self) -> int:
        widths = (self.in_features, *self.hidden, self.num_classes)
        return sum(_linear(a, b) for a, b in zip(widths, widths[1:], strict=False))


# ---------------------------------------------------------------------------------- cnn_small


@dataclass(frozen=True)
class CNNSmallConfig:
    in_channels: int = 1
    image_size: int = 8
    channels: tuple[int, int] = (16, 32)
    hidden: int = 64
    num_classes: int = 10

    SIZE_LIMITS = {"in_channels": MAX_WIDTH, "image_size": MAX_IMAGE_SIDE,
                   "channels": MAX_WIDTH, "hidden": MAX_WIDTH, "num_classes": MAX_CLASSES}

    def __post_init__(self) -> None:
        owner = "cnn_small"
        for key in ("in_channels", "image_size", "hidden", "num_classes"):
            object.__setattr__(self, key, positive_int(owner, key, getattr(self, key)))
        channels = positive_ints(owner, "channels", self.channels, length=2)
        object.__setattr__(self, "channels", channels)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def feature_side(self) -> int:
        """The side of conv2's output map: padding 1 keeps the size, stride 2 halves it
        (rounding up)."""
        return (self.image_size + 1) // 2

    def parameter_count(self) -> int:
        c1, c2 = self.channels
        return (_conv(self.in_channels, c1, 3) + _conv(c1, c2, 3)
                + _linear(c2 * self.feature_side**2, self.hidden)
                + _linear(self.hidden, self.num_classes))


# ------------------------------------------------------------------------------------ resnets

SHORTCUT_OPTIONS = ("A", "B")


def _check_shortcut(owner: str, value: object) -> str:
    if value not in SHORTCUT_OPTIONS:
        raise ValueError(
            f"{owner}.shortcut must be 'A' (zero-padding identity) or 'B' (1x1 projection), "
            f"got {value!r}"
        )
    return str(value)


def cifar_resnet_parameters(in_channels: int, base_width: int, num_classes: int,
                            blocks_per_stage: tuple[int, ...], shortcut: str) -> int:
    """Parameters of `prunescope.models.resnet.CifarResNet`: a bias-free 3×3 stem and its BN,
    BasicBlocks of two bias-free 3×3 convs with BN (plus a 1×1 conv and BN on the shortcut
    where the shape changes, option B only), and the linear classifier."""
    width = base_width
    total = _conv(in_channels, width, 3, bias=False) + _norm(width)
    for i, num_blocks in enumerate(blocks_per_stage):
        out = base_width * 2**i
        for block in range(num_blocks):
            stride = 2 if i > 0 and block == 0 else 1
            total += _conv(width, out, 3, bias=False) + _conv(out, out, 3, bias=False)
            total += 2 * _norm(out)
            if shortcut == "B" and (stride != 1 or width != out):
                total += _conv(width, out, 1, bias=False) + _norm(out)
            width = out
    return total + _linear(width, num_classes)


@dataclass(frozen=True)
class ResNet20Config:
    in_channels: int = 3
    image_size: int = 32
    num_classes: int = 10
    base_width: int = 16
    shortcut: str = "A"

    blocks_per_stage = (3, 3, 3)  # a class attribute, not a field: ResNet-20 is 6·3+2 layers
    SIZE_LIMITS = {"in_channels": MAX_WIDTH, "image_size": MAX_IMAGE_SIDE,
                   "num_classes": MAX_CLASSES, "base_width": MAX_WIDTH // 4}  # 4× at stage 3

    def __post_init__(self) -> None:
        owner = "resnet20"
        for key in ("in_channels", "image_size", "num_classes", "base_width"):
            object.__setattr__(self, key, positive_int(owner, key, getattr(self, key)))
        object.__setattr__(self, "shortcut", _check_shortcut(owner, self.shortcut))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.in_channels, self.image_size, self.image_size)

    def parameter_count(self) -> int:
        return cifar_resnet_parameters(self.in_channels, self.base_width, self.num_classes,
                                       self.blocks_per_stage, self.shortcut)


@dataclass(frozen=True)
class ResNet18Config:
    in_channels: int = 3
    image_size: int = 32
    num_classes: int = 10
    base_width: int = 64

    blocks_per_stage = (2, 2, 2, 2)
    shortcut = "B"  # the ImageNet ResNet-18's projection shortcuts; not configurable
    SIZE_LIMITS = {"in_channels": MAX_WIDTH, "image_size": MAX_IMAGE_SIDE,
                   "num_classes": MAX_CLASSES, "base_width": MAX_WIDTH // 8}  # 8× at stage 4

    def __post_init__(self) -> None:
        for key in ("in_channels", "image_size", "num_classes", "base_width"):
            object.__setattr__(self, key, positive_int("resnet18", key, getattr(self, key)))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.in_channels, self.image_size, self.image_size)

    def parameter_count(self) -> int:
        return cifar_resnet_parameters(self.in_channels, self.base_width, self.num_classes,
                                       self.blocks_per_stage, self.shortcut)


# ---------------------------------------------------------------------------------- vit_small


@dataclass(frozen=True)
class ViTSmallConfig:
    in_channels: int = 3
    image_size: int = 32
    patch_size: int = 4
    dim: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: int = 2
    num_classes: int = 10

    SIZE_LIMITS = {"in_channels": MAX_WIDTH, "image_size": MAX_IMAGE_SIDE,
                   "dim": MAX_WIDTH, "depth": MAX_DEPTH, "heads": MAX_WIDTH,
                   "mlp_ratio": 64, "num_classes": MAX_CLASSES}

    def __post_init__(self) -> None:
        owner = "vit_small"
        for field in fields(self):  # every key is a size or a count
            value = positive_int(owner, field.name, getattr(self, field.name))
            object.__setattr__(self, field.name, value)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"{owner}.patch_size ({self.patch_size}) must divide image_size "
                f"({self.image_size}) so the patches tile the image; pick a divisor"
            )
        if self.dim % self.heads:
            raise ValueError(
                f"{owner}.heads ({self.heads}) must divide dim ({self.dim}) so every head gets "
                "the same width; pick a divisor"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def num_tokens(self) -> int:
        """Patch tokens and the CLS token."""
        return (self.image_size // self.patch_size) ** 2 + 1

    def parameter_count(self) -> int:
        dim, hidden = self.dim, self.mlp_ratio * self.dim
        block = (_norm(dim) + 4 * _linear(dim, dim)  # query, key, value, proj
                 + _norm(dim) + _linear(dim, hidden) + _linear(hidden, dim))
        return (_conv(self.in_channels, dim, self.patch_size) + dim  # patch embedding, CLS
                + self.num_tokens * dim + self.depth * block + _norm(dim)
                + _linear(dim, self.num_classes))
