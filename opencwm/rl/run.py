"""An RL run on the one training loop: the policy (a checkpoint), its frozen initial copy (for the KL metric and
term), the environment mixture, the rollout stream and the objective, and ``Trainer`` for the rest (optimizer,
schedule, gradient clipping, checkpoints with the stream's state, exact resume, JSONL metrics, progress).

    summary = run_rl(RLConfig(init="runs/sft/model", environments=[...], steps=50), "runs/rl")

``RUN/rl.json`` records every setting; a rerun with the same settings resumes from the last checkpoint, one with
other settings is refused in one line. ``RUN/metrics.jsonl`` has a row per step (reward, per environment, response
length, dropped groups, clip fractions, KL to the initial policy, entropy, seconds in rollout, reward and update);
``RUN/rollouts.jsonl`` a few rollouts per step (``opencwm rl show``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from opencwm.errors import UsageError
from opencwm.rl.environments import Mixture, environment
from opencwm.rl.objective import Objective
from opencwm.rl.rollouts import RolloutConfig, RolloutStream, rl_loss

SETTINGS = "rl.json"


@dataclass
class EnvironmentSpec:
    name: str  # a benchmark of opencwm.eval.registry.PROTOCOLS
    data: str
    style: str | None = None
    weight: float = 1.0
    max_tokens: int | None = None


@dataclass
class RLConfig:
    init: str  # the policy's starting checkpoint (a model directory)
    environments: list[EnvironmentSpec]
    steps: int = 50
    prompts: int = 8  # items per step (each sampled group_size times)
    lr: float = 1e-5
    warmup_steps: int = 0
    weight_decay: float = 0.0
    clip: float = 1.0
    checkpoint_every: int = 10
    kl_metric: bool = True  # keep the initial policy to report the KL to it (needed when objective.beta > 0)
    workers: int = 2  # grading sandboxes
    sandbox: str = "auto"  # their backend, and the agent episodes' (gvisor: a user-space kernel between them)
    seed: int = 0
    objective: Objective = field(default_factory=Objective)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)

    def as_dict(self) -> dict:
        return asdict(self)


def check_settings(out: Path, settings: dict) -> None:
    path = out / SETTINGS
    if path.exists():
        before = json.loads(path.read_text())
        free = ("steps", "sandbox")  # (the isolation may change between runs; the results may not)
        changed = sorted(k for k in set(before) | set(settings) if k not in free and before.get(k) != settings.get(k))
        if changed:
            raise UsageError(f"{out} holds an RL run with other settings ({', '.join(changed)}); give another --out "
                             "to start a new run, or the same settings to go on with this one")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1) + "\n")


def run_rl(config: RLConfig, out: str | Path, *, progress: bool = True, device: str = "cpu") -> dict:
    """Runs (or resumes) RL into ``out``; the last step's metrics."""
    from opencwm.model import CWM
    from opencwm.model.hf import CheckpointError
    from opencwm.sandbox import SandboxConfig
    from opencwm.sandbox.pool import SandboxPool
    from opencwm.tokenizer import Tokenizer
    from opencwm.train.distributed import launched_by_torchrun, setup
    from opencwm.train.loop import TrainConfig, Trainer

    out = Path(out)
    distributed = launched_by_torchrun()  # each rank samples its own rollouts; the update is data-parallel (FSDP2)
    rank = 0
    if distributed:
        rank, _, torch_device = setup()
        device = str(torch_device)
    try:
        model = CWM.from_pretrained(config.init, device=device)
        tokenizer = Tokenizer.of_checkpoint(config.init)
    except (CheckpointError, OSError, ValueError) as exc:
        raise UsageError(f"--init {config.init}: cannot load the checkpoint ({exc})") from None
    environments = [environment(spec.name, spec.data, style=spec.style, max_tokens=spec.max_tokens,
                                backend=config.sandbox) for spec in config.environments]
    if distributed and config.rollout.server:
        raise UsageError("--rollout-server serves one process: run it without torchrun")
    if rank == 0:
        check_settings(out, config.as_dict())
    if distributed:
        import torch.distributed as dist

        dist.barrier()
    mixture = Mixture(environments, [spec.weight for spec in config.environments], seed=config.seed + 1_009 * rank)
    reference = None
    if config.kl_metric or config.objective.beta:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    train = TrainConfig(steps=config.steps, batch_size=config.prompts, lr=config.lr, warmup_steps=config.warmup_steps,
                        decay_fraction=0.0, min_lr_ratio=1.0, weight_decay=config.weight_decay, clip=config.clip,
                        seed=config.seed, checkpoint_every=config.checkpoint_every, log_every=1, precision="fp32")
    graded = [e.benchmark for e in environments if hasattr(e, "benchmark")]  # (episodes grade themselves)
    grading = SandboxConfig(backend=config.sandbox, timeout=max([b.grade_timeout for b in graded] or [3.0]),
                            memory_mb=1024,
                            preload=tuple(sorted({m for b in graded for m in b.sandbox_preload})))
    with SandboxPool(grading, config.workers) as pool:
        rollout = dataclasses.replace(config.rollout, seed=config.rollout.seed + 1_000_033 * rank)
        stream = RolloutStream(model, tokenizer, mixture, config.objective, rollout, pool, reference=reference,
                               out_dir=out if rank == 0 else None,
                               sampler=copy.deepcopy(model) if distributed else None)
        trainer = Trainer(model, stream, train, out, tokenizer=tokenizer, distributed=distributed,
                          loss=rl_loss(config.objective, stream.max_tokens))
        try:
            trainer.resume()
            return trainer.train(progress=progress)
        finally:
            stream.close()
