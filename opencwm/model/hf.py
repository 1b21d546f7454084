"""Hugging Face checkpoint directories: ``config.json`` + ``model.safetensors`` (or shards with an index).

What ``transformers``' ``CwmForCausalLM`` publishes loads here by parameter name (the layouts are the same, RoPE
included: both use the rotate-half convention, so no q/k permutation is involved), and what is saved here loads
in ``transformers`` (``AutoModelForCausalLM``) and vLLM as ``model_type: cwm``. Loading builds the model on the
meta device first, so a checkpoint is read once, shard by shard, without a second copy in memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from opencwm.model.config import CwmConfig

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint directory is missing files or does not match its config."""


def _shard_files(path: Path) -> list[Path]:
    if (path / INDEX).exists():
        weight_map = json.loads((path / INDEX).read_text())["weight_map"]
        return [path / name for name in sorted(set(weight_map.values()))]
    if (path / SINGLE).exists():
        return [path / SINGLE]
    raise CheckpointError(f"{path}: no {SINGLE} or {INDEX}")


def load_pretrained(path, build, *, device="cpu", dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The model ``build(config)`` makes (``CWM``: this module sits below the model class, which calls it), with
    the checkpoint's weights."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path}: no config.json (not a Hugging Face checkpoint directory)")
    config = CwmConfig.load(path / "config.json")
    with torch.device("meta"):
        model = build(config)
    expected = set(model.state_dict())
    state: dict[str, torch.Tensor] = {}
    for shard in _shard_files(path):
        for name, tensor in load_file(str(shard), device=str(device)).items():
            if name in expected:
                state[name] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    missing = expected - set(state)
    if missing:
        raise CheckpointError(f"{path}: missing weights, e.g. {sorted(missing)[:3]}")
    model.load_state_dict(state, assign=True)
    # Non-persistent buffers (RoPE frequencies) are recomputed on the real device.
    model.model.rotary = type(model.model.rotary)(config.head_dim, config.rope_parameters).to(device)
    return model.eval()


def save_pretrained(model: torch.nn.Module, path, *, max_shard_bytes: int = 5 * 1024**3) -> None:
    save_state_dict(model.state_dict(), model.config, path, max_shard_bytes=max_shard_bytes)


def save_state_dict(state: dict, config: CwmConfig, path, *, max_shard_bytes: int = 5 * 1024**3) -> None:
    """Write a full (unsharded) state dict as a checkpoint directory, e.g. one gathered from FSDP2 shards."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    dtype = next(iter(state.values())).dtype
    config = config.to_hf()
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    config["dtype"] = config["torch_dtype"]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    for stale in [*list(path.glob("model*.safetensors")), path / INDEX]:
        if stale.exists():
            stale.unlink()
    if len(shards) == 1:
        _atomic_save(shards[0], path / SINGLE)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            _atomic_save(shard, path / name)
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / INDEX).write_text(json.dumps(index, indent=1))
    (path / "config.json").write_text(json.dumps(config, indent=1))


def _atomic_save(tensors: dict, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, target)
