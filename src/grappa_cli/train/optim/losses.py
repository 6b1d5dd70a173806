"""The two training objectives of the paper.

* :class:`NormSoftmaxLoss` (eq. 2, section 3.4): cross entropy over scaled cosine
  similarities to one learned prototype per pseudo-label; trains one adaptor set.
* :class:`BarlowTwinsLoss` (eq. 4, section 3.5): redundancy-reduction loss on pairs of
  embeddings (two views of an image for Grappa-T, k-NN neighbours for Grappa-N); trains
  the fusion layers.

Both hold trainable parameters (the classifier, the projector g) that exist only for
training: the paper discards them afterwards, so the stages save the model's weights only.
Both compute in float32 even under bf16 autocast: cosine logits and correlations near 1
lose their meaning at bf16 precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from grappa_cli.errors import TrainingError
from grappa_cli.train import distributed as dist_utils

__all__ = [
    "BarlowTwinsLoss",
    "GlobalBatchNorm1d",
    "NormSoftmaxLoss",
    "barlow_twins_loss",
    "cross_correlation",
    "off_diagonal",
]


def _float32(x: Tensor) -> Tensor:
    return x.float() if x.dtype != torch.float32 else x


class NormSoftmaxLoss(nn.Module):
    """Norm-softmax loss (eq. 2): ``CE(scale * cos(z, w_y))`` with L2-normalised rows of W.

    ``weight`` ([num_classes, dim]) optionally initialises the prototypes (for example with
    the k-means centroids that defined the pseudo-labels); by default they are drawn from a
    standard normal, as pytorch-metric-learning's ``NormalizedSoftmaxLoss`` does. The
    paper's scale gamma is the inverse of that library's temperature (0.05 -> 20).
    """

    def __init__(self, dim: int, num_classes: int, scale: float = 20.0, weight: Tensor | None = None) -> None:
        super().__init__()
        if num_classes < 2:
            raise TrainingError(f"the norm-softmax classifier needs at least 2 classes, got {num_classes}")
        self.dim = dim
        self.num_classes = num_classes
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        if weight is None:
            nn.init.normal_(self.weight)
        else:
            if tuple(weight.shape) != (num_classes, dim):
                raise TrainingError(
                    f"classifier weight has shape {tuple(weight.shape)}, expected ({num_classes}, {dim})"
                )
            with torch.no_grad():
                self.weight.copy_(weight)

    def logits(self, embeddings: Tensor) -> Tensor:
        """``scale * cos(theta)`` for every (embedding, class) pair, shape [batch, num_classes]."""
        with torch.autocast(embeddings.device.type, enabled=False):
            z = F.normalize(_float32(embeddings), dim=-1)
            w = F.normalize(_float32(self.weight), dim=-1)
            return self.scale * (z @ w.T)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Mean loss over the batch; ``labels`` are pseudo-label indices in ``[0, num_classes)``."""
        return F.cross_entropy(self.logits(embeddings), labels.long())

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_classes={self.num_classes}, scale={self.scale}"


def off_diagonal(x: Tensor) -> Tensor:
    """The off-diagonal entries of a square matrix, flattened (Barlow Twins' trick, no copy)."""
    n, m = x.shape
    if n != m:
        raise ValueError(f"off_diagonal needs a square matrix, got {n}x{m}")
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradients over ranks too.

    Every rank computes the same loss from the summed statistics, so the gradient of that
    loss with respect to one rank's inputs is the sum of every rank's upstream gradient;
    after DDP averages the parameter gradients, each rank holds the gradient of the loss
    that one process would compute on the whole batch.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor) -> Tensor:
        out = x.clone()
        torch.distributed.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> Tensor:
        out = grad.clone()
        torch.distributed.all_reduce(out)
        return out


def _all_reduce_sum(x: Tensor) -> Tensor:
    """Differentiable sum over ranks; the identity on one process."""
    return _AllReduceSum.apply(x) if dist_utils.world_size() > 1 else x


def _global_moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Count, per-feature mean and biased variance of ``x`` [N, D] over the batches of all ranks."""
    count = _all_reduce_sum(torch.tensor([float(x.shape[0])], device=x.device))
    mean = _all_reduce_sum(x.sum(dim=0)) / count
    centered = x - mean
    var = _all_reduce_sum((centered * centered).sum(dim=0)) / count
    return count, mean, var


def _standardize(z: Tensor, eps: float) -> Tensor:
    """Per-feature standardisation with statistics of the whole batch across all ranks.

    On one process this is exactly ``BatchNorm1d(affine=False)`` in training mode (biased
    variance, same ``eps``); across ranks it matches ``SyncBatchNorm``, on any backend.
    """
    _, mean, var = _global_moments(z)
    return (z - mean) / torch.sqrt(var + eps)


def _require_pairs(per_process: int) -> None:
    """Batch statistics need at least two pairs on every process."""
    if per_process < 2:
        ranks = dist_utils.world_size()
        raise TrainingError(
            f"Barlow Twins needs batch statistics but got {per_process} pair(s) per process",
            hint=f"use a batch size of at least {2 * ranks} pairs ({ranks} process(es) x 2)",
        )


def cross_correlation(z1: Tensor, z2: Tensor, eps: float = 1e-5) -> Tensor:
    """Barlow Twins' C = bn(z1).T @ bn(z2) / N over the global batch of N pairs (all ranks)."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise TrainingError(f"paired embeddings must have equal [batch, dim] shapes, got {tuple(z1.shape)} "
                            f"and {tuple(z2.shape)}")
    _require_pairs(z1.shape[0])
    with torch.autocast(z1.device.type, enabled=False):
        a = _standardize(_float32(z1), eps)
        b = _standardize(_float32(z2), eps)
        total = _all_reduce_sum(torch.tensor([float(z1.shape[0])], device=z1.device))
        return _all_reduce_sum(a.T @ b) / total


def barlow_twins_loss(c: Tensor, lambd: float = 0.0051, scale_loss: float = 1.0) -> Tensor:
    """Eq. 4 on a cross-correlation matrix: ``scale * (sum (1-C_nn)^2 + lambd * sum_{n!=m} C_nm^2)``."""
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = off_diagonal(c).pow(2).sum()
    return scale_loss * (on_diag + lambd * off_diag)


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` whose training statistics cover the batch of every rank.

    This is what ``SyncBatchNorm`` does in the Barlow Twins reference, but it also works on
    the CPU with the gloo backend (``SyncBatchNorm`` is GPU only), so a run under torchrun
    computes the same function as one process with the whole batch. On one process it is
    a plain ``BatchNorm1d``. In training mode under torchrun every rank must call it in the
    same order (it runs collectives), as it does inside a DDP training step.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or dist_utils.world_size() == 1:
            return super().forward(x)
        if x.dim() != 2:
            raise ValueError(f"GlobalBatchNorm1d takes [batch, features] inputs, got {tuple(x.shape)}")
        x = _float32(x)  # as autocast runs batch norm: statistics in float32
        count, mean, var = _global_moments(x)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                unbiased = var * count / (count - 1).clamp(min=1.0)
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
        out = (x - mean) / torch.sqrt(var + self.eps)
        if self.affine:
            out = out * self.weight + self.bias
        return out


def make_projector(dim: int, sizes: Sequence[int]) -> nn.Sequential:
    """Barlow Twins' projector g: (Linear-BN-ReLU) blocks then a last bias-free Linear.

    ``sizes`` are the output widths (the reference's ``--projector 8192-8192-8192``). An
    empty ``sizes`` gives the identity, which is handy to test the loss on embeddings.
    """
    widths = [dim, *[int(s) for s in sizes]]
    if any(w <= 0 for w in widths):
        raise TrainingError(f"projector widths must be positive, got {list(sizes)}")
    layers: list[nn.Module] = []
    for i in range(len(widths) - 2):
        layers.append(nn.Linear(widths[i], widths[i + 1], bias=False))
        layers.append(GlobalBatchNorm1d(widths[i + 1]))
        layers.append(nn.ReLU(inplace=True))
    if len(widths) >= 2:
        layers.append(nn.Linear(widths[-2], widths[-1], bias=False))
    return nn.Sequential(*layers)


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins loss (eq. 4) with its projector g, which is discarded after training.

    ``forward(z1, z2)`` takes the model's embeddings of the two members of each pair,
    projects them with g (each view separately, as the reference does, so the projector's
    batch norms see one view at a time), standardises each feature over the global batch,
    and returns ``scale_loss * (sum_n (1 - C_nn)^2 + lambd * sum_{n!=m} C_nm^2)``.

    ``scale_loss`` is the reference's ``--scale-loss`` (0.024 in the command that produced
    its published model; later versions dropped it and folded it into the learning rates).
    The paper keeps "the same hyper-parameters for the scaling and beta" as Barlow Twins.
    """

    def __init__(
        self,
        dim: int,
        projector_sizes: Sequence[int] = (),
        lambd: float = 0.0051,
        scale_loss: float = 0.024,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.lambd = float(lambd)
        self.scale_loss = float(scale_loss)
        self.eps = float(eps)
        self.projector = make_projector(dim, projector_sizes)
        self.out_dim = int(projector_sizes[-1]) if len(projector_sizes) else dim

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        _require_pairs(min(z1.shape[0], z2.shape[0]))
        c = cross_correlation(self.projector(z1), self.projector(z2), eps=self.eps)
        return barlow_twins_loss(c, self.lambd, self.scale_loss)

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}, scale_loss={self.scale_loss}, out_dim={self.out_dim}"
