"""The one training loop, for every stage (pretrain, midtrain, SFT): AdamW or Muon, warmup-stable-decay or cosine
schedules, gradient accumulation and clipping, bf16 autocast on GPU and on CPUs with bf16 matrix units (AMX),
fp32 elsewhere (``precision``), optional per-block
``torch.compile`` and activation checkpointing, metrics to JSONL, and checkpoints that resume exactly.

A checkpoint directory ``checkpoints/step-NNNNNN`` holds the model in Hugging Face format (``model/``), the
optimizer state, the data stream's state and every RNG state; it is written under a temporary name and renamed,
and ``checkpoints/latest`` names the newest one, so a run killed at any moment resumes from its last complete
checkpoint and continues exactly as if it had never stopped.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from opencwm.data.packing import IGNORE, PackedStream
from opencwm.model.flops import cuda_peak_flops, flops_per_token
from opencwm.model.transformer import CWM
from opencwm.train.optim import OPTIMIZERS, build_optimizer, fast_bf16


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8  # sequences per micro-batch
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    schedule: str = "wsd"  # wsd (warmup-stable-decay) | cosine
    decay_fraction: float = 0.2  # wsd: the final fraction of steps that decays
    weight_decay: float = 0.1
    optimizer: str = "adamw"  # adamw | muon (Muon for the blocks' matrices, AdamW for the rest: opencwm.train.optim)
    muon_lr: float = 0.02
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 10
    compile: bool = False
    activation_checkpointing: bool = False
    keep_checkpoints: int = 2
    precision: str = "auto"  # auto | bf16 | fp32 (auto: bf16 autocast on CUDA and on CPUs with AMX, else fp32)

    def __post_init__(self) -> None:
        if self.schedule not in ("wsd", "cosine"):
            raise ValueError(f"unknown schedule {self.schedule!r} (wsd or cosine)")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r} (choose from {', '.join(OPTIMIZERS)})")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"unknown precision {self.precision!r} (auto, bf16 or fp32)")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("steps, batch_size and grad_accum must be positive")


def lr_scale(step: int, config: TrainConfig) -> float:
    """The schedule's factor for optimizer step ``step`` (0-based): 1 at the peak; every param group's own
    learning rate (AdamW's ``lr``, Muon's ``muon_lr``) is multiplied by it."""
    floor = config.min_lr_ratio
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "cosine":
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    decay_start = config.steps - int(config.steps * config.decay_fraction)
    if step < decay_start:
        return 1.0
    progress = (step - decay_start) / max(1, config.steps - decay_start)
    return 1 + (floor - 1) * min(1.0, progress)


def learning_rate(step: int, config: TrainConfig) -> float:
    """AdamW's learning rate for optimizer step ``step`` (0-based)."""
    return config.lr * lr_scale(step, config)


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to autocast to bf16: asked for, or ``auto`` on CUDA and on CPUs whose matrix units (AMX) make bf16
    faster than fp32 (about 2x for the tiny preset here); plain AVX-512 CPUs are faster in fp32."""
    if precision != "auto":
        return precision == "bf16"
    return fast_bf16(device)


def loss_fn(model: CWM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the learned tokens of the batch (a tensor: no host synchronisation)."""
    labels = batch["labels"]
    count = (labels != IGNORE).sum().clamp(min=1)
    return model(batch["input_ids"], document_ids=batch["document_ids"], labels=labels) / count


def latest_checkpoint(run: str | Path) -> Path | None:
    """The newest finished checkpoint of a training run's directory (``RUN/checkpoints/step-N``; its weights and
    tokenizer in ``model/``), as the run's ``checkpoints/latest`` names it; None before the first."""
    latest = Path(run) / "checkpoints" / "latest"
    return latest.parent / latest.read_text().strip() if latest.exists() else None


class Trainer:
    """With ``distributed=True`` (under torchrun) the model is sharded with FSDP2; give each rank its own stream
    (e.g. seeded with seed + rank). Rank 0 writes the model and metrics; every rank keeps its optimizer shard and
    stream state in the checkpoint. With a ``tokenizer``, each checkpoint's model folder holds it too, so the folder
    alone loads in ``transformers`` (model and ``AutoTokenizer``) or serves with vLLM."""

    def __init__(self, model: CWM, stream: PackedStream, config: TrainConfig, out_dir: str | Path,
                 *, distributed: bool = False, tokenizer=None, loss=None):
        self.model, self.stream, self.config = model, stream, config
        self.loss = loss or loss_fn  # (model, batch) -> loss, or (loss, metrics): RL's objective plugs in here
        self.tokenizer = tokenizer
        self.out_dir = Path(out_dir)
        self.device = model.device
        self.distributed = distributed
        self.rank, self.world = 0, 1
        self.model_config = model.config
        self.peak_flops = cuda_peak_flops() if self.device.type == "cuda" else None  # for MFU
        if distributed:
            import torch.distributed as dist

            from opencwm.train.distributed import shard

            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            shard(model)
        self.optimizer = build_optimizer(model, kind=config.optimizer, lr=config.lr, muon_lr=config.muon_lr,
                                         weight_decay=config.weight_decay, betas=config.betas,
                                         distributed=distributed, fused=self.device.type == "cuda")
        self.step = 0
        model.gradient_checkpointing = config.activation_checkpointing
        if config.compile:
            model.compile_blocks()

    # -- checkpoints ------------------------------------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.out_dir / "checkpoints"

    def _barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def save(self) -> Path:
        final = self.checkpoints / f"step-{self.step:06d}"
        tmp = self.checkpoints / f".step-{self.step:06d}.tmp"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        if self.distributed:
            from opencwm.train.distributed import full_state_dict

            state_dict = full_state_dict(self.model)  # collective
        else:
            state_dict = self.model.state_dict()
        if self.rank == 0:
            from opencwm.model.hf import save_state_dict

            save_state_dict(state_dict, self.model_config, tmp / "model")
            if self.tokenizer is not None:
                self.tokenizer.save(tmp / "model")
            state = {"step": self.step, "config": asdict(self.config), "world_size": self.world,
                     "python_rng": random.getstate()}
            (tmp / "state.json").write_text(json.dumps(state))
        torch.save({"optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                    "stream": self.stream.state_dict()}, tmp / f"trainer-rank{self.rank}.pt")
        self._barrier()
        if self.rank == 0:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            (self.checkpoints / ".latest.tmp").write_text(final.name)
            os.replace(self.checkpoints / ".latest.tmp", self.checkpoints / "latest")
            for old in sorted(self.checkpoints.glob("step-*"))[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self._barrier()
        return final

    def resume(self) -> bool:
        directory = latest_checkpoint(self.out_dir)
        if directory is None:
            return False
        state = json.loads((directory / "state.json").read_text())
        if state.get("world_size", 1) != self.world:
            raise ValueError(f"{directory} was written by {state.get('world_size', 1)} processes, this run has "
                             f"{self.world}")
        full = CWM.from_pretrained(directory / "model").state_dict()
        if self.distributed:
            from opencwm.train.distributed import load_full_state_dict

            load_full_state_dict(self.model, full)
        else:
            self.model.load_state_dict(full)
        # onto the CPU first: a run trained on a GPU resumes on a machine without one (the optimizers move their
        # state to their parameters' device as they load it)
        mine = torch.load(directory / f"trainer-rank{self.rank}.pt", weights_only=False, map_location="cpu")
        self.optimizer.load_state_dict(mine["optimizer"])
        torch.set_rng_state(mine["torch_rng"])
        self.stream.load_state_dict(mine["stream"])
        rng = state["python_rng"]
        random.setstate((rng[0], tuple(rng[1]), rng[2]))
        self.step = state["step"]
        return True

    # -- the loop ---------------------------------------------------------------------------------------------------
    def train(self, *, progress: bool = True, on_checkpoint=None) -> dict:
        """Train to ``config.steps`` from where the trainer stands; ``on_checkpoint(step)``, if given, is called on
        rank 0 after every checkpoint is saved (e.g. to evaluate it: its time is left out of tokens/s, and the
        model is back in training mode afterwards)."""
        config = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        metrics = (self.out_dir / "metrics.jsonl").open("a") if self.rank == 0 else None
        self.model.train()
        bf16 = use_bf16(config.precision, self.device)
        start, start_step, last = time.monotonic(), self.step, {}
        # The reported loss, tokens/s and MFU are the window's since the last report (one step's loss swings with
        # the sources that happen to fill its batch; the first window's speed includes compilation).
        window_loss, window_steps, window_tokens, window_start = torch.zeros((), device=self.device), 0, 0, start
        bar = None
        if progress and self.rank == 0 and self.step < config.steps:  # from the first step on, not at --log-every
            from tqdm import tqdm

            tokens = config.batch_size * config.grad_accum * self.stream.seq_len * self.world
            bar = tqdm(total=config.steps, initial=self.step, unit="step", file=sys.stderr, dynamic_ncols=True,
                       desc=getattr(self.stream, "description", None) or f"training ({tokens} tokens/step)")
        while self.step < config.steps:
            self.optimizer.set_lr_scale(lr_scale(self.step, config))
            total_loss, total_tokens, step_metrics, update_seconds = torch.zeros((), device=self.device), 0, {}, 0.0
            for _ in range(config.grad_accum):
                batch = {k: v.to(self.device, non_blocking=True)
                         for k, v in self.stream.next_batch(config.batch_size).items()}
                began = time.monotonic()
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = self.loss(self.model, batch)
                if isinstance(loss, tuple):  # (loss, metrics of this micro-batch): averaged over the step
                    loss, metrics_of_batch = loss
                    for key, value in metrics_of_batch.items():
                        step_metrics[key] = step_metrics.get(key, 0.0) + value / config.grad_accum
                (loss / config.grad_accum).backward()
                update_seconds += time.monotonic() - began
                total_loss += loss.detach() / config.grad_accum
                total_tokens += batch["input_ids"].numel()
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.clip)
            if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
                norm = norm.full_tensor()
            began = time.monotonic()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            if step_metrics or hasattr(self.stream, "metrics"):  # the step's own figures, as the report's last word
                self.step_metrics = {**getattr(self.stream, "metrics", {}), **step_metrics,
                                     "seconds_update": round(update_seconds + time.monotonic() - began, 3)}
            window_tokens += total_tokens * self.world
            window_loss += total_loss
            window_steps += 1
            # Loss and norm are read (a host synchronisation, and under FSDP2 a reduction over ranks) only on the
            # steps that report them.
            if self.step % config.log_every == 0 or self.step == config.steps:
                if self.distributed:
                    import torch.distributed as dist

                    dist.all_reduce(window_loss)
                    window_loss /= self.world
                loss_value = float(window_loss / window_steps)  # waits for the device, so the clock below is true
                now = time.monotonic()
                last = self._report(loss_value, norm, window_tokens / (now - window_start), now - start,
                                    start_step, progress, metrics, bar)
                window_loss, window_steps, window_tokens, window_start = torch.zeros((), device=self.device), 0, 0, now
            if bar is not None:
                bar.update(1)
            if self.step % config.checkpoint_every == 0 or self.step == config.steps:
                self.save()
                if on_checkpoint is not None and self.rank == 0:
                    began = time.monotonic()
                    on_checkpoint(self.step)
                    self.model.train()
                    window_start += time.monotonic() - began
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()
        return last

    def _report(self, loss, norm, tokens_per_s, elapsed, start_step, progress, metrics, bar=None) -> dict:
        """Metrics of this step: JSONL from rank 0, and a progress line with loss, tokens/s and MFU on GPU (both over
        the steps since the last report), seconds since this ``train`` call began, and the ETA (at its pace)."""
        config = self.config
        last = {"step": self.step, "loss": round(loss, 5), "lr": learning_rate(self.step - 1, config),
                "grad_norm": round(float(norm), 4), "tokens_per_s": round(tokens_per_s, 1),
                "elapsed_s": round(elapsed, 3), **getattr(self, "step_metrics", {})}
        if self.peak_flops:
            per_device = tokens_per_s / self.world
            mfu = per_device * flops_per_token(self.model_config, self.stream.seq_len) / self.peak_flops
            last["mfu"] = float(f"{mfu:.4g}")  # 4 significant digits: a tiny model's MFU is far below 1e-4
        if metrics is not None:
            metrics.write(json.dumps(last) + "\n")
            metrics.flush()
            if progress:
                eta = elapsed / (self.step - start_step) * (config.steps - self.step)
                mfu = f"  MFU {last['mfu']:.1%}" if "mfu" in last else ""
                line = (f"step {self.step}/{config.steps}  loss {loss:.4f}  lr {last['lr']:.2e}  "
                        f"{last['tokens_per_s']:.0f} tok/s{mfu}  eta {eta:.0f}s")
                if bar is not None:
                    bar.set_postfix_str(f"loss {loss:.4f}, {last['tokens_per_s']:.0f} tok/s", refresh=False)
                    bar.write(line, file=sys.stderr)
                else:
                    print(line, file=sys.stderr)
        return last
