"""A small vision transformer for 28x28 images (Dosovitskiy et al., 2021), sized for a CPU.

    image (B, 1, 28, 28) -> patches (B, N, P*P) -> tokens (B, 1 + N, D) [class token + position]
    -> depth x pre-norm block [x + attn(norm(x)); x + mlp(norm(x))] -> norm -> class token (B, D)

The projections are plain ``nn.Linear`` layers named ``qkv``, ``proj`` (attention) and ``fc1``,
``fc2`` (MLP), so LoRA can target them by name (``mnistlab finetune --mode lora``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .base import Classifier


class PatchEmbed(nn.Module):
    """Non-overlapping P x P patches -> D-dim tokens, plus a class token and learned positions."""

    def __init__(self, *, patch: int, dim: int, image: int = 28):
        super().__init__()
        if image % patch:
            raise ValueError(f"patch size {patch} does not divide the image size {image}")
        self.patch = patch
        n = (image // patch) ** 2
        self.embed = nn.Linear(patch * patch, dim)  # a P x P stride-P convolution, as a matmul
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 1 + n, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        patches = F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)  # (B, N, P*P)
        tokens = self.embed(patches)  # (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D); a traced size, not an int
        return torch.cat([cls, tokens], dim=1) + self.pos  # (B, 1 + N, D)


class Attention(nn.Module):
    def __init__(self, *, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, 3D) -> 3 x (B, H, T, D/H); no size is read off x, so a traced or exported
        # graph keeps a dynamic batch size
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0)
        return self.proj(y.transpose(1, 2).flatten(2))  # (B, T, D)


class MLP(nn.Module):
    def __init__(self, *, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: the residual stream is never normalized in place."""

    def __init__(self, *, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim=dim, heads=heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim=dim, hidden=round(dim * mlp_ratio), dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))  # (B, T, D)


class Pool(nn.Module):
    """Final norm, then the class token (``cls``) or the mean of the patch tokens (``mean``)."""

    def __init__(self, *, dim: int, pool: str):
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        self.pool = pool
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)  # (B, T, D)
        return x[:, 0] if self.pool == "cls" else x[:, 1:].mean(1)  # (B, D)


@register("vit-tiny")
class ViTTiny(Classifier):
    """A small vision transformer: 7x7 patches, 4 pre-norm blocks of width 64, class token.

    16 patches + 1 class token keep attention cheap on a CPU; 4x4 patches (``patch=4``, 49
    tokens) cost ~3x more per image and, in the same time, trained no better here.

    ``blocks()`` (for ``partial:K``) is [patch embedding, block 1..depth, final norm]; the
    final norm counts as a block, so ``partial:2`` trains the last transformer block, the
    final norm and the head.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        patch: int = 7,  # pixels per patch side; 28 must be divisible by it
        dim: int = 64,  # token width
        depth: int = 4,  # transformer blocks
        heads: int = 4,  # attention heads (dim / heads per head)
        mlp_ratio: float = 2.0,  # MLP hidden width = dim * mlp_ratio
        dropout: float = 0.0,  # attention and MLP dropout
        pool: str = "cls",  # cls | mean
    ):
        super().__init__()
        self.config = dict(num_classes=num_classes, patch=patch, dim=dim, depth=depth,
                           heads=heads, mlp_ratio=mlp_ratio, dropout=dropout, pool=pool)
        self.backbone = nn.Sequential(
            PatchEmbed(patch=patch, dim=dim),
            *[Block(dim=dim, heads=heads, mlp_ratio=mlp_ratio, dropout=dropout)
              for _ in range(depth)],
            Pool(dim=dim, pool=pool),
        )
        self.feature_dim = dim
        self._init_head(num_classes)
        self.apply(_init_weights)

    def _init_head(self, num_classes: int) -> None:
        super()._init_head(num_classes)
        _init_weights(self.head)


def _init_weights(m: nn.Module) -> None:
    # truncated-normal linear weights and zero biases, as in the ViT reference code
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
