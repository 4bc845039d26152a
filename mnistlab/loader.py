"""In-memory batch iteration: the whole split lives on the device as uint8, no DataLoader.

Each epoch draws one permutation from a ``torch.Generator`` seeded with ``(seed, epoch)``, so
epoch e's order depends on nothing else (set ``loader.epoch = e`` to replay it on resume).
With ``fraction`` below 1 an epoch takes only the head of its permutation: a fresh random
subset of that share of the split every epoch (the `epoch_fraction` setting).
Images are gathered by index (``index_select`` on the uint8 rows), converted to float32 on the
raw 0..255 scale, augmented when asked (0 stays background, the augmentation's fill), and
normalized in place as ``shift + scale * x`` = ``(x/255 - mean)/std``.

Why it is built this way (whole batches at a time, chunked conversion, no DataLoader) and
what each choice measured: docs/performance.md, "The loader".
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from mnistlab.augment import Augment

__all__ = ["BatchLoader", "epoch_seed", "epoch_size"]

# elements converted per op without augmentation (256 images of 28x28: 0.8 MB of float32, which
# stays in cache until the batches are used)
CHUNK = 256 * 784


def epoch_size(n: int, fraction: float) -> int:
    """Images one epoch takes from a split of n with ``epoch_fraction`` = fraction."""
    return min(n, max(1, math.floor(fraction * n)))


def epoch_seed(seed: int, epoch: int) -> int:
    """A 64-bit generator seed that depends only on (seed, epoch), well mixed."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])


class BatchLoader:
    """Iterates (x float32 (B, 1, H, W) normalized, y int64 (B,)) over an in-memory split.

    ``images``: (N, H, W) or (N, 1, H, W) uint8, NumPy or torch. ``augment`` is applied to
    each batch before normalization; ``styled`` (N,) bool marks images that already show a
    style (rendered and preprocessed files): the augmentation leaves their stroke width and
    resolution alone (``AugmentParams.unstyled``) and warps them as the others.
    ``shard(rank, world_size)`` makes this loader yield only its rank's share of every epoch
    (for multi-process training).
    """

    def __init__(
        self,
        images: np.ndarray | Tensor,
        labels: np.ndarray | Tensor,
        *,
        batch_size: int,
        mean: float,
        std: float,
        shuffle: bool = True,
        seed: int = 0,
        device: str | torch.device = "cpu",
        augment: Augment | None = None,
        drop_last: bool = False,
        fraction: float = 1.0,
        styled: np.ndarray | Tensor | None = None,
    ):
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels)
        if images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}")
        if images.ndim == 3:
            images = images[:, None]  # (N, 1, H, W): a slice is then already a model batch
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (N, H, W) or (N, 1, H, W), got {tuple(images.shape)}")
        if labels.shape != (len(images),):
            raise ValueError(f"labels must be ({len(images)},), got {tuple(labels.shape)}")
        if styled is not None:
            styled = torch.as_tensor(styled)
            if styled.dtype != torch.bool or styled.shape != (len(images),):
                raise ValueError(f"styled must be ({len(images)},) bool, got "
                                 f"{tuple(styled.shape)} {styled.dtype}")
        if not 0 < fraction <= 1 or (fraction < 1 and not shuffle):
            raise ValueError(f"fraction must be in (0, 1], and below 1 only with shuffle; got "
                             f"{fraction} (shuffle={shuffle})")
        if batch_size < 1 or std <= 0 or seed < 0:
            raise ValueError(
                f"need batch_size >= 1, std > 0, seed >= 0; got {batch_size, std, seed}"
            )
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()  # (N, 1, H, W) uint8, resident
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.mean, self.std = float(mean), float(std)
        self.shuffle = shuffle
        self.seed = seed
        self.augment = augment
        # None when nothing is styled (or nothing augmented): batches then skip the gather
        self.styled = None if styled is None or augment is None or not styled.any() \
            else styled.to(self.device)
        self.drop_last = drop_last
        # each epoch takes the head of its permutation: a fresh random subset of this size
        self.per_epoch = epoch_size(len(self.images), fraction)
        self.epoch = 0  # the epoch the next iteration runs; settable for resume
        self.rank, self.world_size = 0, 1
        # x/255 -> (x/255 - mean)/std as one op: shift + scale * x (uint8 in, float32 out)
        self._scale = 1.0 / (255.0 * self.std)
        self._shift = torch.tensor(-self.mean / self.std, device=self.device)
        self._per_image = self.images[0].numel() if len(self.images) else 1

    def shard(self, rank: int, world_size: int) -> BatchLoader:
        """Yield only rank's share: every epoch's order, padded by wrapping around to a multiple
        of world_size, split round-robin. All ranks get the same number of batches, and with
        batch_size b, batch i of the ranks together is batch i of one process with batch size
        b * world_size (exactly, when world_size divides the split's size; otherwise the last
        batch repeats a few images). Augmentation follows the same rows."""
        if not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}"
            )
        self.rank, self.world_size = rank, world_size
        return self

    @property
    def num_samples(self) -> int:
        """Samples this loader yields per epoch (this rank's share when sharded)."""
        return math.ceil(self.per_epoch / self.world_size)

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def order(self, epoch: int) -> Tensor | None:
        """Sample indices (CPU int64) of this rank for an epoch; None = 0..N-1 in order."""
        n = len(self.images)
        if not self.shuffle and self.world_size == 1:
            return None
        if self.shuffle:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            perm = torch.randperm(n, generator=g)
        else:
            perm = torch.arange(n)
        perm = perm[: self.per_epoch]
        if self.world_size > 1:
            pad = self.num_samples * self.world_size - len(perm)
            perm = torch.cat([perm, perm[:pad]])[self.rank :: self.world_size]
        return perm

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self.order(self.epoch)
        self.epoch += 1
        return self._batches(order)

    def _batches(self, order: Tensor | None) -> Iterator[tuple[Tensor, Tensor]]:
        b = self.batch_size
        n = len(self.images) if order is None else len(order)
        stop = n - n % b if self.drop_last else n
        # without augmentation, whole batches are converted CHUNK images at a time and
        # yielded as views: one gather and one conversion per chunk instead of per batch
        chunk = b if self.augment is not None else max(b, CHUNK // self._per_image // b * b)
        styled = self.styled
        if order is None:  # in order: each chunk is a view of the resident images
            sources, labels = self.images[:stop].split(chunk), self.labels[:stop].split(chunk)
            marks = styled[:stop].split(chunk) if styled is not None else None
        else:  # gathered by index; the labels of the whole epoch in one op
            order = order[:stop].to(self.device)
            sources = (self.images.index_select(0, i) for i in order.split(chunk))
            labels = self.labels.index_select(0, order).split(chunk)
            marks = styled.index_select(0, order).split(chunk) if styled is not None else None
        for k, (src, y) in enumerate(zip(sources, labels, strict=True)):
            x = src.float()  # on the raw 0..255 scale: 0 = background, the augmentation's fill
            if self.augment is not None:
                x = self._augment(x, None if marks is None else marks[k])
            torch.add(self._shift, x, alpha=self._scale, out=x)  # normalize in place
            yield from zip(x.split(b), y.split(b), strict=True)

    def _augment(self, x: Tensor, styled: Tensor | None = None) -> Tensor:
        if self.augment.cfg.is_identity:
            return x
        # sharded: draw the parameters of the whole global batch, as one process would, from
        # the stream every rank shares, and apply this rank's rows (it holds global positions
        # rank, rank + world_size, ...: see shard)
        params = self.augment.sample(len(x) * self.world_size, x.shape[-2], x.shape[-1])
        if self.world_size > 1:
            params = params.rows(slice(self.rank, None, self.world_size))
        if styled is not None:
            params = params.unstyled(styled, x.shape[-2])
        return self.augment.apply(x, params)

    def state_dict(self) -> dict:
        """What an exact resume at an epoch boundary needs (the data order and the augment
        stream); save it after an epoch ends."""
        state = {"epoch": self.epoch}
        if self.augment is not None:
            state["augment"] = self.augment.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        if self.augment is not None and "augment" in state:
            self.augment.load_state_dict(state["augment"])
