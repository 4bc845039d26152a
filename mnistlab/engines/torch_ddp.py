"""The torch side of data-parallel training: the process group, DDP, synchronized batch norm.

With W ranks and a global batch B, rank r trains on rows r, r+W, r+2W, ... of each
single-process batch (``BatchLoader.shard``: the same epoch permutation, dealt round-robin),
B/W images each. DDP averages the ranks' gradients, so each step's update is the
single-process update (up to float rounding in the reduction) provided three things hold,
and this module sees to them:

- batch norm normalizes with the statistics of the whole global batch, as one process
  would: ``sync_batchnorm`` (torch's SyncBatchNorm on GPUs; on CPUs, where torch has none,
  ``SyncBatchNormCPU`` below, two all-reduces per layer);
- augmentation draws the parameters of the whole global batch on every rank, from the
  same stream, and applies its own rows (``BatchLoader``);
- metrics (training loss and accuracy, validation) are sums over the ranks (``all_sum``),
  so every rank sees the same numbers and takes the same early-stopping decisions.

Dropout is the exception: each rank draws its own masks (seeded per rank and epoch), so a
model with dropout trains as well but not bit-for-bit as one process would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from ..distributed import Context

__all__ = ["process_group", "backend_for", "sync_batchnorm", "SyncBatchNormCPU", "all_sum",
           "wrap"]


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(ctx: Context, device: torch.device) -> Iterator[None]:
    """Join the ranks' process group for the duration of a ``fit`` (NCCL on GPUs, gloo on
    CPUs), then leave it."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), init_method=ctx.init_method, rank=ctx.rank,
                            world_size=ctx.world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def all_sum(values: list[float | torch.Tensor], device: torch.device) -> list[float]:
    """Each value summed over the ranks (float64, one all-reduce for all of them)."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(())
                     for v in values])
    dist.all_reduce(t)
    return t.tolist()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The model under DDP (its gradients averaged over the ranks after each backward)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None)


class _AllSum(torch.autograd.Function):
    """A sum over the ranks that autograd can go through: the gradient of a sum that every
    rank uses is the sum of the ranks' gradients. (torch.distributed.nn's all_reduce does
    the same but is deprecated, and its successor is a private module.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNormCPU(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the ranks' whole batch, for CPU tensors (torch's SyncBatchNorm runs on
    GPUs only). Outside training, or in a single process, it is plain batch norm; its
    parameters and buffers are named as BatchNorm's, so checkpoints do not change.

    Two differentiable all-reduces (``_AllSum``) give the global mean and then
    the global biased variance; autograd carries the gradient back through them, so each
    rank's input gradient includes what the statistics owe to the other ranks' losses."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        all_reduce = _AllSum.apply
        dims = [0, *range(2, x.dim())]  # every axis but the channels
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        n_local = xf.numel() // xf.shape[1]
        total = all_reduce(torch.cat([xf.sum(dims), xf.new_tensor([n_local])]))
        n = total[-1]
        mean = total[:-1] / n  # (C,)
        centred = xf - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / n  # biased, as batch norm divides
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / self.num_batches_tracked.item() if self.momentum is None
                     else self.momentum)
                self.running_mean.lerp_(mean.detach(), m)
                count = float(n)  # running_var is unbiased, as batch norm keeps it
                self.running_var.lerp_(var.detach() * (count / max(count - 1, 1)), m)
        return y.to(x.dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every batch-norm layer by one synchronized over the ranks (in place for
    nested layers; the same parameter and buffer tensors, so an optimizer keeps them)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, SyncBatchNormCPU):
        new = SyncBatchNormCPU(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _convert_cpu(child))
    return module
