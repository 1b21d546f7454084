"""Rollouts: the batches of an RL update, as a stream the one training loop (``opencwm.train.loop.Trainer``) reads.

Each ``next_batch(prompts)`` draws that many items from the mixture, samples ``group_size`` completions of each
with the current policy (the model being trained, through the local completion interface), grades every
completion with its environment's grader in a pool of sandboxes, and turns the rewards into group-relative
advantages (``opencwm.rl.objective``). A group whose rewards are all equal carries no advantage and is dropped
(``skip_equal_groups``, DAPO's dynamic sampling; fresh items are drawn, up to ``max_draws`` times, while no group
is left). A completion cut at the response limit (no stop token) is ``overlong``: ``mask`` keeps it out of the
loss (DAPO's overlong filtering), ``none`` keeps it as it is. The batch holds the sequences (prompt and completion),
the mask of the model's own tokens, each sequence's advantage, and the log-probabilities the sampling policy gave
its tokens (the importance ratio's denominator) and, for the KL metric or term, the initial policy's.

The stream's state (the mixture's generator and the step) is part of every checkpoint, so a resumed run draws and
samples exactly what the uninterrupted one would. A few rollouts per step are written to ``rollouts.jsonl`` for
``opencwm rl show``.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from opencwm.eval.harness import collect_grades, cut, submit_grades
from opencwm.infer.local import LocalCompleter
from opencwm.rl.environments import AgentEnvironment, Mixture
from opencwm.rl.objective import Objective, group_advantages
from opencwm.sandbox.pool import SandboxPool

OVERLONG = ("mask", "none")


@dataclass
class RolloutConfig:
    group_size: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    skip_equal_groups: bool = True
    overlong: str = "mask"
    max_draws: int = 4  # draws of fresh items while every group of a step was dropped
    logged_per_step: int = 4  # rollouts written to rollouts.jsonl each step
    shuffle_rewards: bool = False  # a control: rewards permuted across the step's samples (nothing to learn)
    overlap: bool = False  # sample step t+1 while step t's update runs (one step off-policy: the ratio corrects)
    server: str | None = None  # an OpenAI-compatible server (vLLM) that samples single-turn rollouts instead
    served_model: str | None = None  # its name for the model; the server reloads the weights after every update
    seed: int = 0

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError("group_size must be at least 2 (advantages are relative to the group)")
        if self.overlong not in OVERLONG:
            raise ValueError(f"overlong must be one of {', '.join(OVERLONG)}")

    def as_dict(self) -> dict:
        return asdict(self)


def next_token_logps(model, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(token t | tokens before t) for t = 1.. of each row, the log-distributions they come from)."""
    log_probs = torch.log_softmax(model(input_ids)[:, :-1].float(), -1)
    return log_probs.gather(-1, input_ids[:, 1:, None]).squeeze(-1), log_probs


@torch.no_grad()
def token_logps(model, input_ids: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """``next_token_logps`` without gradients, in chunks of rows: (rows, length - 1)."""
    return torch.cat([next_token_logps(model, input_ids[start : start + chunk])[0]
                      for start in range(0, input_ids.size(0), chunk)])


class RolloutStream:
    def __init__(self, model, tokenizer, mixture: Mixture, objective: Objective, config: RolloutConfig,
                 pool: SandboxPool, *, reference=None, out_dir: str | Path | None = None, batch_rows: int = 16,
                 sampler=None):
        self.policy, self.tokenizer, self.mixture = model, tokenizer, mixture
        # Rollouts sample from ``sampler``, a copy brought up to date each step, when the policy cannot serve them
        # itself: under torchrun it is sharded (FSDP2: a forward is a collective every rank must make in step), and
        # with overlap it is being updated while the next step samples.
        self.sampler = sampler if sampler is not None or not config.overlap else copy.deepcopy(model)
        self.model = self.sampler if self.sampler is not None else model
        self.remote = None
        if config.server:  # a vLLM server samples; it reloads the policy's weights, written here, every step
            from opencwm.infer.remote import RemoteCompleter

            if out_dir is None:
                raise ValueError("rollouts from a server need a run directory (the weights it reloads go there)")
            self.remote = RemoteCompleter(config.server, config.served_model or "cwm", tokenizer)
            self.weights_dir = Path(out_dir).resolve() / "rollout-weights"
        self._ahead = ThreadPoolExecutor(1, thread_name_prefix="rollouts")  # the next step's rollouts (overlap)
        self._pending: Future | None = None
        self.objective, self.config, self.pool = objective, config, pool
        self.reference = reference  # the initial policy (frozen), for the KL metric and term; None: neither
        self.out_dir = Path(out_dir) if out_dir else None
        self.batch_rows = batch_rows
        self.step = 0
        self.seq_len = 0  # the longest sequence of the last batch (the loop's progress display reads it)
        self.max_tokens = max(env.max_tokens for env in mixture.environments)
        self.metrics: dict[str, float] = {}
        self.description = f"RL ({config.group_size} samples per item)"
        self._forage_envs: dict = {}

    # -- the stream interface of the training loop ------------------------------------------------------------------
    def state_dict(self) -> dict:
        # the rollout buffer first (the next step's batch, being sampled): the step and the draws include it
        pending = self._pending.result() if self._pending is not None else None
        state = {"step": self.step, "mixture": self.mixture.state_dict()}
        if pending is not None:
            state["pending"] = pending
        return state

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.mixture.load_state_dict(state["mixture"])
        self._pending = None
        if "pending" in state:
            self._pending = Future()
            self._pending.set_result(state["pending"])

    def next_batch(self, prompts: int) -> dict[str, torch.Tensor]:
        if not self.config.overlap:
            self._sync()
            batch, self.metrics = self._make(prompts)
        else:
            if self._pending is None:  # the first step: nothing sampled ahead yet
                self._sync()
                self._pending = self._ahead.submit(self._make, prompts)
            batch, self.metrics = self._pending.result()
            self._sync()  # the next step samples with the weights of every update so far, while this one runs
            self._pending = self._ahead.submit(self._make, prompts)
        self.seq_len = batch["input_ids"].size(1)
        return batch

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        self._ahead.shutdown(wait=True)

    def _sync(self) -> None:
        """The sampler's weights from the policy's (every rank gathers the same parameters in the same order), and
        the server's, when a server samples: written as a checkpoint it reloads."""
        if self.sampler is not None:
            state = {k: v.full_tensor() if hasattr(v, "full_tensor") else v
                     for k, v in self.policy.state_dict().items()}
            self.sampler.load_state_dict(state)
        if self.remote is not None:
            self.model.save_pretrained(self.weights_dir)
            self.remote.reload_weights(str(self.weights_dir))

    def _make(self, prompts: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """One step's batch and figures: items drawn, sampled, graded; equal groups dropped and drawn again."""
        started = time.monotonic()
        timing = {"rollout": 0.0, "reward": 0.0}
        samples: list[dict] = []
        drawn: list[dict] = []  # every sample of the step, kept or not: the policy's reward as it stands
        for draw in range(self.config.max_draws):
            groups = self._groups(prompts, timing, seed=self.config.seed + 1_000_003 * self.step + 7919 * draw)
            drawn += [s for g in groups for s in g]
            kept = [g for g in groups if not self.config.skip_equal_groups or len({s["reward"] for s in g}) > 1]
            if kept or draw == self.config.max_draws - 1:
                samples = [s for g in (kept or groups) for s in g]
                dropped = len(groups) - len(kept)
                break
        batch = update_batch(samples, self.model, self.config.group_size, self.objective.scale_rewards,
                             mask_overlong=self.config.overlong == "mask", reference=self.reference)
        metrics = self._record(drawn, samples, dropped, timing, time.monotonic() - started)
        self.step += 1
        return batch, metrics

    # -- sampling and grading ---------------------------------------------------------------------------------------
    def _groups(self, prompts: int, timing: dict, seed: int) -> list[list[dict]]:
        """``prompts`` items, ``group_size`` graded completions (or episodes) of each: a list per item of samples."""
        drawn = [self.mixture.sample() for _ in range(prompts)]
        groups: dict[int, list[dict]] = {}
        single = [i for i, (env, _) in enumerate(drawn) if not isinstance(env, AgentEnvironment)]
        if single:
            groups.update(self._single_turn(drawn, single, timing, seed))
        for i, (env, task) in enumerate(drawn):
            if isinstance(env, AgentEnvironment):
                groups[i] = self._episodes(env, task, timing, seed + 7 * i)
        ordered = [groups[i] for i in range(len(drawn))]
        if self.config.shuffle_rewards:
            flat = [s for group in ordered for s in group]
            rewards = [s["reward"] for s in flat]
            random.Random(seed).shuffle(rewards)
            for sample, reward in zip(flat, rewards):
                sample["reward"] = reward
        return ordered

    def _episodes(self, env: AgentEnvironment, task: dict, timing: dict, seed: int) -> list[dict]:
        """``group_size`` agentic episodes of the policy on a forager task, each rewarded by the task's tests; a
        sample holds every turn's prompt and sampled tokens (the model's own, which alone carry loss). Their
        whole time (generation, tools, grading) counts as rollout time."""
        from opencwm.forage.agent import run_episode
        from opencwm.forage.environment import Environment
        from opencwm.forage.policies import CompleterPolicy

        start = time.monotonic()
        if task["env"] not in self._forage_envs:
            self._forage_envs[task["env"]] = Environment.open(task["env"])
        forager = self._forage_envs[task["env"]]
        completer = LocalCompleter(self.model, self.tokenizer)  # prefix reuse from one turn to the next
        was_training = self.model.training
        samples = []
        try:
            for g in range(self.config.group_size):
                policy = CompleterPolicy(completer, name="rl", think=False, max_tokens=env.max_tokens,
                                         temperature=self.config.temperature, top_p=self.config.top_p,
                                         seed=seed * self.config.group_size + g)
                record = run_episode(forager, task, policy, env.budget, backend=env.backend)
                samples.append({"env": env.name, "id": task["instance_id"], "turns": policy.turns,
                                "prompt_ids": policy.turns[0][0] if policy.turns else [],
                                "tokens": [t for _, tokens in policy.turns for t in tokens],
                                "text": record["diff"], "answer": record["status"], "reward": float(record["reward"]),
                                "reason": record["status"], "overlong": False})
        finally:
            self.model.train(was_training)
        timing["rollout"] += time.monotonic() - start
        return samples

    def _single_turn(self, drawn: list, indices: list[int], timing: dict, seed: int) -> dict[int, list[dict]]:
        """The groups of the single-turn items among ``drawn``: sampled in batches per environment, then graded
        by each environment's benchmark in the sandbox pool."""
        config, tokenizer = self.config, self.tokenizer
        start = time.monotonic()
        by_env: dict[int, list[int]] = defaultdict(list)  # (by the environment itself: names may repeat)
        for i in indices:
            by_env[id(drawn[i][0])].append(i)
        completions: dict[int, list[list[int]]] = {}
        prompt_ids = {i: tokenizer.encode(drawn[i][1].prompt, allow_special=True) for i in indices}
        stops = {key: [tokenizer.token_id(token) for token in drawn[members[0]][0].benchmark.stop_tokens]
                 for key, members in by_env.items()}
        was_training = self.model.training
        completer = self.remote or LocalCompleter(self.model, tokenizer, reuse_prefix=False,
                                                  batch_size=self.batch_rows)
        try:
            for key, members in by_env.items():
                env = drawn[members[0]][0]
                made = completer.complete_batch([prompt_ids[i] for i in members], stop=stops[key],
                                                max_tokens=env.max_tokens, temperature=config.temperature,
                                                top_p=config.top_p, n=config.group_size, seed=seed + members[0],
                                                stop_texts=env.benchmark.stop_texts)
                completions.update(zip(members, made))
        finally:
            self.model.train(was_training)
        timing["rollout"] += time.monotonic() - start
        start = time.monotonic()
        groups, pending = {}, []
        for i in indices:
            env, problem = drawn[i]
            texts = [cut(tokenizer.decode([t for t in tokens if t not in stops[id(env)]]), env.benchmark.stop_texts)
                     for tokens in completions[i]]
            answers = [env.benchmark.extract(problem, text) for text in texts]
            pending.append((i, env, problem, texts, answers,
                            submit_grades(env.benchmark, self.pool, problem, answers)))
        for i, env, problem, texts, answers, jobs in pending:
            verdicts, _ = collect_grades(env.benchmark, problem, answers, jobs)
            groups[i] = [{"env": env.name, "id": problem.id, "prompt_ids": prompt_ids[i], "tokens": tokens,
                          "text": text, "answer": answer, "reward": float(verdict.passed), "reason": verdict.reason,
                          "overlong": len(tokens) >= env.max_tokens and not (tokens and tokens[-1] in stops[id(env)])}
                         for tokens, text, answer, verdict in zip(completions[i], texts, answers, verdicts)]
        timing["reward"] += time.monotonic() - start
        return groups

    def _record(self, drawn: list[dict], samples: list[dict], dropped: int, timing: dict, seconds: float) -> dict:
        """The step's figures: reward, per environment, response length and overlong share over every sample drawn
        (the policy as it stands); the samples the update learns from and the groups dropped."""
        rewards = [s["reward"] for s in drawn]
        per_env: dict[str, list[float]] = defaultdict(list)
        for s in drawn:
            per_env[s["env"]].append(s["reward"])
        metrics = {"reward": sum(rewards) / len(rewards), "groups_dropped": dropped, "samples": len(samples),
                   "response_tokens": sum(len(s["tokens"]) for s in drawn) / len(drawn),
                   "overlong": sum(s["overlong"] for s in drawn) / len(drawn),
                   "seconds_rollout": round(timing["rollout"], 3), "seconds_reward": round(timing["reward"], 3),
                   "seconds_batch": round(seconds, 3),
                   **{f"reward/{name}": sum(values) / len(values) for name, values in per_env.items()}}
        if self.out_dir is not None and self.config.logged_per_step:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "rollouts.jsonl", "a", encoding="utf-8") as handle:
                for s in drawn[: self.config.logged_per_step]:
                    handle.write(json.dumps({"step": self.step, "env": s["env"], "id": s["id"],
                                             "prompt": self.tokenizer.decode(s["prompt_ids"]),
                                             "completion": s["text"], "answer": s["answer"], "reward": s["reward"],
                                             "reason": s["reason"], "overlong": s["overlong"]}) + "\n")
        return metrics


def update_batch(samples: list[dict], model, group_size: int, scale_rewards: str, *, mask_overlong: bool = True,
                 reference=None) -> dict[str, torch.Tensor]:
    """The update's tensors of a step's samples (groups of ``group_size`` consecutive samples, each with
    ``prompt_ids``, its completion ``tokens`` -- or, for an episode, ``turns``: every turn's prompt and sampled
    tokens --, ``reward`` and ``overlong``): a row per completion or turn (right-padded), the mask of the positions
    that predict the model's own tokens (position t predicts token t + 1; none for an overlong completion with
    ``mask_overlong``; prompts, tool outputs and earlier turns never), each row's sample's group-relative
    advantage, and the log-probabilities ``model`` (the sampling policy) and ``reference`` (the initial policy, if
    given) give each next token."""
    rewards = torch.tensor([s["reward"] for s in samples])
    per_sample = group_advantages(rewards, group_size, scale_rewards)
    rows, row_advantages = [], []  # a row per turn: the prompt as the model saw it, then the tokens it sampled
    for sample, advantage in zip(samples, per_sample.tolist()):
        learned = not (sample["overlong"] and mask_overlong)
        for prompt, tokens in sample.get("turns") or [(sample["prompt_ids"], sample["tokens"])]:
            rows.append((prompt, tokens, learned))
            row_advantages.append(advantage)
    if not rows:  # (every episode ended before its first turn): one empty row, nothing learned
        rows, row_advantages = [([0], [], False)], [0.0]
    length = max(2, max(len(prompt) + len(tokens) for prompt, tokens, _ in rows))
    input_ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length - 1)
    for row, (prompt, tokens, learned) in enumerate(rows):
        sequence = prompt + tokens
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        if learned and tokens:
            mask[row, len(prompt) - 1 : len(sequence) - 1] = 1
    advantages = torch.tensor(row_advantages)
    was_training = model.training
    model.eval()
    try:
        batch = {"input_ids": input_ids, "mask": mask, "advantages": advantages,
                 "old_logps": token_logps(model, input_ids.to(model.device)).cpu()}
        if reference is not None:
            batch["ref_logps"] = token_logps(reference, input_ids.to(reference.device)).cpu()
    finally:
        model.train(was_training)
    return batch


def rl_loss(objective: Objective, max_tokens: int):
    """The loss the training loop calls on a rollout batch: the clipped surrogate over the model's own tokens, and
    its metrics (clip fractions, mean ratio, KL to the initial policy when known, entropy). Under torchrun, token
    aggregation counts the tokens of every rank, so the update equals one process's on the whole step (sequence
    and constant aggregation do when the ranks hold as many sequences each)."""
    from opencwm.rl.objective import policy_loss

    def loss(model, batch: dict[str, torch.Tensor]):
        logps, log_probs = next_token_logps(model, batch["input_ids"])
        total = None
        if objective.aggregation == "token" and torch.distributed.is_initialized():
            # Under torchrun each rank holds a part of the step and the gradients are averaged over ranks: every
            # token of the whole step weighs the same when each rank divides by the step's count over the ranks
            count = batch["mask"].sum().detach().clone()
            torch.distributed.all_reduce(count)
            total = (count / torch.distributed.get_world_size()).clamp(min=1e-6)
        value, metrics = policy_loss(logps, batch["old_logps"], batch["advantages"], batch["mask"], objective,
                                     ref_logps=batch.get("ref_logps"), max_tokens=max_tokens, total_tokens=total)
        with torch.no_grad():
            entropy = -(log_probs.exp() * log_probs).sum(-1)
            metrics["entropy"] = float((entropy * batch["mask"]).sum() / batch["mask"].sum().clamp(min=1.0))
        return value, metrics

    return loss
