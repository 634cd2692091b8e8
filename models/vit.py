"""A small Vision Transformer for 32×32 images whose attention maps and heads can be inspected.

Dosovitskiy et al., "An Image is Worth 16x16 Words" (ICLR 2021): non-overlapping patches are
linearly embedded, a learned CLS token and learned position embeddings are added, pre-norm
Transformer blocks (Vaswani et al. 2017; LayerNorm before attention and MLP, as in ViT) mix
the tokens, and a linear classifier reads the final LayerNorm of the CLS token.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from prunescope.models.configs import ViTSmallConfig
from prunescope.models.registration import register


class SelfAttention(nn.Module):
    """Multi-head self-attention with explicit softmax probabilities (Vaswani et al. 2017, Eq. 1).

    Attention(Q, K, V) = softmax(QKᵀ/√d_head) V per head, then the `proj` output projection.
    `query`, `key` and `value` are separate Linear layers (rather than one fused qkv) so that
    the rows belonging to head h, [h·d_head, (h+1)·d_head), can be scored or pruned per head
    on their own. The probabilities pass through `attn_probs`, an `nn.Identity`, so a forward
    hook on it sees the per-head attention maps of shape (batch, heads, tokens, tokens), each
    row summing to 1; no fused scaled-dot-product kernel, which would never materialise them.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.attn_probs = nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # The head width is read from the tensor, not the config, so a checkpoint whose
        # query/key/value rows were structurally pruned evenly within every head still runs.
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (self._split_heads(layer(x)) for layer in (self.query, self.key, self.value))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        probs = self.attn_probs(scores.softmax(dim=-1))
        mixed = (probs @ v).transpose(1, 2).flatten(2)  # (batch, tokens, heads · head_dim)
        return self.proj(mixed)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(LN(x)), then x + mlp(LN(x)) with a GELU MLP.

    `cls_out` is an `nn.Identity` applied to the block's output CLS token only so that a hook
    can capture a (batch, dim) summary of the block; its result is not used further.
    """

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))
        self.cls_out = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        self.cls_out(x[:, 0])
        return x


@register("vit_small")
class ViTSmall(nn.Module):
    """ViT with a CLS token and learned position embeddings: 6 blocks, 3 heads of 64, dim 192.

    Defaults: 4×4 patches of a 32×32 image give 64 patch tokens + CLS = 65 tokens; MLP width
    2 × dim; 1.81 M parameters with 10 classes (the width and heads of DeiT-Ti, Touvron et
    al. 2021, at half its depth and MLP ratio).

    Hooks for analysis:
    - `blocks.{i}.attn.attn_probs` outputs the softmax attention probabilities
      (batch, heads, tokens, tokens), rows summing to 1, token 0 being CLS; their names are
      listed in `attention_layers`.
    - `analysis_layers` are `blocks.{i}.cls_out` (each block's output CLS token, (batch, dim)),
      then `norm` (the final LayerNorm of the CLS token, what the classifier reads) and the
      logits `classifier`. The CLS token rather than the mean of all tokens: it is the one
      token the classifier reads, so the per-block series follows the representation the
      prediction is made from, and it keeps every layer at `dim` features, not tokens × dim.
      (A block ends in a residual sum rather than a nonlinearity; its output is the residual
      stream the next block reads.)
    """

    config_class = ViTSmallConfig

    def __init__(self, config: ViTSmallConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.dim
        self.input_shape: tuple[int, ...] = config.input_shape
        self.num_tokens = config.num_tokens
        # A conv with kernel = stride = patch size is the linear patch embedding of the paper.
        self.patch_embed = nn.Conv2d(
            config.in_channels, dim, config.patch_size, stride=config.patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, dim))
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, config.heads, config.mlp_ratio * dim) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, config.num_classes)
        self.attention_layers: tuple[str, ...] = tuple(
            f"blocks.{i}.attn.attn_probs" for i in range(config.depth)
        )
        self.analysis_layers: tuple[str, ...] = (
            *(f"blocks.{i}.cls_out" for i in range(config.depth)),
            "norm",
            "classifier",
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # The truncated-normal(0.02) scheme of the ViT reference code for embeddings and
        # linear layers; LayerNorms keep their (1, 0) default.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (batch, patches, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.classifier(self.norm(x[:, 0]))
