"""One run on many processes: ``torchrun --nproc-per-node N -m hwsbs search ...``.

torchrun starts N copies of the same command and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``
and the rendezvous address; :func:`init_from_env` joins the process group (gloo on CPU, nccl on
GPU, ``LOCAL_RANK`` picks the GPU). Every rank then runs the whole pipeline on its shard of each
global batch, and the ranks stay identical by construction:

- ``--batch-size`` is the *global* batch. Every rank draws the same permutation of the training
  set (the one a single process draws at that seed) and takes its contiguous slice of each
  global batch, so the union of the ranks' batches is the single process's batch.
- After each backward the gradients are averaged with weights ``n_rank / n_global``: the mean
  gradient of the global batch, as one process computes it (up to batch-norm statistics, which
  stay per rank, as in DistributedDataParallel without SyncBatchNorm).
- The SBS activation statistics that drive the gates are averaged over ranks in the forward, and
  parameters and buffers (calibration, batch-norm running statistics) are broadcast from rank 0
  at every phase and epoch boundary: every rank sees the same gates and derives the same
  configuration.
- Rank 0 alone writes artefacts and checkpoints; every rank reads them on ``--resume``.

Gradients are all-reduced explicitly after ``backward`` rather than by wrapping the model in
``DistributedDataParallel``: the search freezes one gate family on alternate steps (DDP's reducer
expects the same parameters to receive gradients on every step) and adds cost-term gradients
computed outside the model's forward; the explicit reduction also keeps the model's
``state_dict`` names unchanged. Gradients are flattened into one buffer per dtype, so a step costs
one all-reduce, as one DDP bucket would.
"""

from __future__ import annotations

import os
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from hwsbs.errors import ConfigError

__all__ = [
    "World",
    "world",
    "is_main",
    "init_from_env",
    "shutdown",
    "mean_over_ranks",
    "sum_over_ranks",
    "sync_gradients",
    "broadcast_state",
    "broadcast_object",
    "gather_objects",
    "describe",
    "barrier",
    "GlobalBatchSampler",
    "rank_loader",
    "sync_batch_norms",
]


@dataclass(frozen=True)
class World:
    """Where this process stands among the ranks of one run."""

    rank: int = 0  # this process's index, 0..size-1; rank 0 writes the artefacts
    size: int = 1  # number of processes working on the run
    local_rank: int = 0  # index on this machine: picks the GPU

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's place in the run (one rank of one when no process group is joined)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def is_main() -> bool:
    """True on the rank that writes artefacts and prints (the only rank of a single-process run).

    Outside the process group (before joining it, or after leaving it at the end of a run) the
    rank torchrun gave this process in ``RANK`` decides.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") in ("", "0")


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}: expected an integer, got {value!r}") from None


def init_from_env(device: str) -> tuple[torch.device | None, bool]:
    """Join the process group torchrun describes, if it describes one.

    Args:
        device: the run's ``--device`` (``cpu`` selects gloo, ``cuda`` nccl and ``cuda:LOCAL_RANK``).

    Returns:
        ``(device, joined)``: the device this rank computes on (None when not distributed: the
        caller keeps ``--device``), and whether this call joined the group (then
        :func:`shutdown` should leave it).

    Raises:
        ConfigError: torch.distributed is unavailable, or the environment is malformed.
    """
    if "WORLD_SIZE" not in os.environ or _env_int("WORLD_SIZE") <= 1:
        return None, False
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0
    on_gpu = device.startswith("cuda")
    here = torch.device("cuda", local_rank) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(here)
    if dist.is_initialized():
        return here, False
    dist.init_process_group(backend="nccl" if on_gpu else "gloo")
    return here, True


def shutdown(joined: bool, failed: bool = False) -> None:
    """Leave the process group if :func:`init_from_env` joined it.

    Args:
        joined: what :func:`init_from_env` returned.
        failed: the run is ending with an exception. A clean exit first waits for every rank:
            a rank that tears down gloo and exits while a peer still holds its connections (rank
            0 writing artefacts) dies in ~1 of 7 runs with "terminate called without an active
            exception" (SIGABRT, measured on torch 2.13). A failing rank does not wait: its
            peers may be inside another collective, and torchrun stops them anyway.
    """
    if joined and dist.is_initialized():
        if not failed:
            dist.barrier()
        dist.destroy_process_group()


def mean_over_ranks(t: Tensor) -> Tensor:
    """``t`` averaged over ranks (in place; ``t`` itself when not distributed). No autograd."""
    if world().distributed:
        with torch.no_grad():
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t.div_(dist.get_world_size())
    return t


def sum_over_ranks(values: Sequence[float]) -> list[float]:
    """Element-wise sums of ``values`` over ranks (float64; the values themselves when alone)."""
    if not world().distributed:
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def sync_gradients(params: Sequence[nn.Parameter] | Iterator[nn.Parameter], n_local: int) -> None:
    """Replace every gradient by the global batch's: ``sum_r n_r grad_r / sum_r n_r``.

    The batch sizes travel in the same buffer as the gradients (one all-reduce per dtype).
    Parameters without a gradient on this step (a frozen gate family) are skipped on every rank
    alike: which parameters have gradients depends only on the step, never on the data.
    """
    if not world().distributed:
        return
    by_dtype: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for p in params:
        if p.grad is not None:
            by_dtype.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for (dtype, device), group in sorted(by_dtype.items(), key=lambda kv: str(kv[0])):  # same order on every rank
        count = torch.full((1,), float(n_local), dtype=dtype, device=device)
        flat = torch.cat([g.reshape(-1) for g in group]).mul_(float(n_local))
        flat = torch.cat([flat, count])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = flat[:-1].div_(flat[-1])
        offset = 0
        for g in group:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n


def broadcast_state(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (calibration, batch-norm statistics)."""
    if not world().distributed:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj``, in rank order (``[obj]`` when not distributed)."""
    if not world().distributed:
        return [obj]
    box: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(box, obj)
    return box


def describe() -> dict[str, object] | None:
    """What result.json records of a torchrun job (None for one process)."""
    if not world().distributed:
        return None
    return {"processes": dist.get_world_size(), "backend": str(dist.get_backend()), "ranks_agreed": None}


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank (``obj`` itself when not distributed)."""
    if not world().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait until every rank gets here."""
    if world().distributed:
        dist.barrier()


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's slice of each global batch, drawn as a single process draws it.

    The permutation is the one a shuffling DataLoader yields with a generator seeded with
    ``seed`` (:func:`hwsbs.data.make_loader`; a test holds them equal), cut into global batches of
    ``batch_size``; rank ``r`` of ``W`` takes the ``r``-th of ``W`` nearly equal contiguous
    slices. A final global batch smaller than ``W`` is dropped on every rank (no rank may get
    an empty batch).

    Args:
        dataset: what is sampled (only its length is used).
        batch_size: the global batch.
        shuffle: permute (training) or keep the order (evaluation).
        seed: the permutation's seed.
        rank / size: this rank and the number of ranks.
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int, rank: int, size: int) -> None:
        self.n = len(dataset)  # type: ignore[arg-type]  # map-style datasets have a length
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.rank, self.size = int(rank), int(size)

    def global_batches(self) -> list[list[int]]:
        """Every global batch, as index lists (the same on every rank)."""
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed)
            # A DataLoader draws its workers' base seed from its generator before the sampler's
            # permutation (torch.utils.data._share_dist_seed); draw it too, to get the same order.
            torch.empty((), dtype=torch.int64).random_(generator=gen)
            order = torch.randperm(self.n, generator=gen).tolist()
        else:
            order = list(range(self.n))
        cuts = [order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        return [b for b in cuts if len(b) >= self.size]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield [int(i) for i in torch.tensor(batch).tensor_split(self.size)[self.rank].tolist()]

    def __len__(self) -> int:
        return len(self.global_batches())


def rank_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, workers: int) -> DataLoader:
    """This rank's loader: its slice of every global batch of ``batch_size`` (see
    :class:`GlobalBatchSampler`)."""
    w = world()
    sampler = GlobalBatchSampler(dataset, batch_size, shuffle, seed, w.rank, w.size)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0)


class _AllReduceSum(torch.autograd.Function):
    """``sum_r x_r`` on every rank, with the backward that :func:`sync_gradients` completes.

    The global loss is ``sum_r (n_r / N) L_r`` and sync_gradients weights rank r's gradients by
    ``n_r / N``; so the gradient passed back to rank q is ``sum_r n_r g_r / n_q`` (the plain sum
    of every rank's gradient when the shards are equal).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, n_local: int) -> Tensor:
        ctx.n_local = float(n_local)
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        out = grad * ctx.n_local
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / ctx.n_local, None


def _global_batch_norm_forward(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """A batch norm's forward with the statistics of the global batch (training, under torchrun).

    The ranks' per-channel sums and sums of squares are all-reduced with a differentiable
    all-reduce, so values and gradients are those of one batch norm over the global batch.
    torch's SyncBatchNorm runs on GPUs only; this works on any backend (gloo on CPU).
    """
    if not (bn.training and world().distributed):
        return type(bn).forward(bn, x)
    dims = [d for d in range(x.dim()) if d != 1]
    c = x.shape[1]
    packed = torch.cat([x.sum(dims), (x * x).sum(dims), x.new_full((1,), float(x.numel() // max(c, 1)))])
    packed = cast(Tensor, _AllReduceSum.apply(packed, int(x.shape[0])))
    n = packed[-1]
    mean = packed[:c] / n
    var = (packed[c : 2 * c] / n - mean * mean).clamp_min(0.0)
    if bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None:
        with torch.no_grad():
            if bn.num_batches_tracked is not None:
                bn.num_batches_tracked.add_(1)
            # momentum None: the cumulative average, as BatchNorm computes it
            m = bn.momentum if bn.momentum is not None else 1.0 / float(cast(Tensor, bn.num_batches_tracked))
            bn.running_mean.lerp_(mean.detach(), m)
            bn.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1.0), m)
    shape = [1, c] + [1] * (x.dim() - 2)
    y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y


def sync_batch_norms(model: nn.Module) -> int:
    """Under torchrun, make every batch norm of ``model`` use the global batch's statistics.

    Each module's ``forward`` is replaced on the instance (its class, its parameter and buffer
    names stay, so torch.fx still sees a batch-norm leaf and state dicts load anywhere); nothing
    changes in a single process. Returns how many were changed.
    """
    if not world().distributed:
        return 0
    changed = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and "forward" not in m.__dict__:
            m.forward = types.MethodType(_global_batch_norm_forward, m)  # type: ignore[method-assign]
            changed += 1
    return changed
