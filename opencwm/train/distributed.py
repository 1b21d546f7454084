"""Data-parallel training with torchrun and FSDP2: process group set-up, per-block ``fully_shard``, and the
gathering of full state dicts for Hugging Face checkpoints (rank 0 writes them).

    torchrun --standalone --nproc_per_node=2 -m opencwm.cli train ...    (gloo on CPU, nccl on GPUs)
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from opencwm.model.transformer import CWM


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup() -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes; returns (rank, world size, this rank's device)."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def shard(model: CWM) -> CWM:
    """FSDP2: each block is its own unit (parameters gathered just in time, freed after), then the rest."""
    from torch.distributed.fsdp import fully_shard

    for block in model.model.layers:
        fully_shard(block)
    fully_shard(model)
    return model


def full_state_dict(model: CWM) -> dict[str, torch.Tensor]:
    """The unsharded parameters on CPU (a collective: every rank calls it; only rank 0 gets the tensors)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model: CWM, state: dict[str, torch.Tensor]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
