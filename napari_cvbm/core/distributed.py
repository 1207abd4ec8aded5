"""Data-parallel training across processes started by ``torchrun`` (DistributedDataParallel).

Each rank samples its own patches (seed + rank); gradients are all-reduced by DDP, so the
students, and the EMA teachers computed from them, stay identical on every rank. BatchNorm
(``norm="batch"``) normalises over the global batch on GPUs (SyncBatchNorm); its running
statistics are averaged over the ranks after every step, on any backend, so they agree too.
Only rank 0 validates, logs and writes checkpoints; the weights it selects are broadcast to the
others.
"""

import os
from typing import Dict

import torch
import torch.distributed as dist


def init_from_environment() -> bool:
    """Join the process group described by torchrun's environment; False when not launched so."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """This rank's GPU (LOCAL_RANK) when training on CUDA; the device itself otherwise."""
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def broadcast_state(state: Dict[str, torch.Tensor], device: torch.device) -> Dict[str, torch.Tensor]:
    """Rank 0's tensors, on every rank (same keys and shapes everywhere)."""
    if not is_distributed():
        return state
    out = {}
    for key, value in state.items():
        tensor = value.to(device).clone()
        dist.broadcast(tensor, 0)
        out[key] = tensor.cpu()
    return out


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (a decision all ranks must share, such as the layout)."""
    if not is_distributed():
        return flag
    tensor = torch.tensor([int(flag)], device=device)
    dist.broadcast(tensor, 0)
    return bool(tensor.item())


def average_buffers(model: torch.nn.Module) -> None:
    """Replace every floating-point buffer (BatchNorm running statistics) by its mean over the ranks."""
    if not is_distributed():  # called every training step: nothing to gather in one process
        return
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1) for b in buffers])  # one all-reduce for all of them
    dist.all_reduce(flat)
    flat /= world_size()
    for buffer, mean in zip(buffers, flat.split([b.numel() for b in buffers])):
        buffer.copy_(mean.view_as(buffer))


def weights_agree(model: torch.nn.Module, device: torch.device) -> bool:
    """True when every rank holds exactly the same floating-point weights as rank 0."""
    if not is_distributed():
        return True
    mismatch = torch.zeros(1, device=device)
    for value in model.state_dict().values():
        reference = value.detach().to(device).clone()
        dist.broadcast(reference, 0)
        mismatch += (reference != value.detach().to(device)).sum()
    dist.all_reduce(mismatch)
    return int(mismatch.item()) == 0


def finish() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
