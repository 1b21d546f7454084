"""RL: the objective against TRL's GRPO loss (loss and gradients, each option TRL also has), advantages against
TRL's rule, rollouts graded by the benchmarks' own graders with masks on the model's own tokens, a learning test
that can fail (the reward rises within a bounded number of steps; with rewards shuffled across samples it does not),
and runs through the CLI that resume exactly."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import torch

from opencwm.rl.objective import Objective, group_advantages, policy_loss

# (TRL's loss_type, its epsilon / epsilon_high / beta) -> our aggregation
TRL_CASES = [
    ("grpo", 0.2, 0.2, 0.0, "sequence"),
    ("grpo", 0.2, 0.28, 0.04, "sequence"),
    ("bnpo", 0.2, 0.28, 0.0, "token"),
    ("dapo", 0.2, 0.28, 0.0, "token"),
    ("dapo", 0.1, 0.3, 0.1, "token"),
    ("dr_grpo", 0.2, 0.2, 0.0, "constant"),
    ("dr_grpo", 0.2, 0.28, 0.04, "constant"),
]


class _Accelerator:
    num_processes, sync_gradients = 1, True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def _trl_loss(loss_type: str, epsilon: float, epsilon_high: float, beta: float, logps: torch.Tensor,
              inputs: dict, max_completion_length: int) -> torch.Tensor:
    """TRL's own ``GRPOTrainer._compute_loss`` on given log-probabilities: the trainer's state is a stand-in holding
    the settings the loss reads, and the model's log-probabilities are the ones given."""
    from collections import defaultdict

    from trl import GRPOTrainer

    state = SimpleNamespace(
        loss_type=loss_type, epsilon_low=epsilon, epsilon_high=epsilon_high, beta=beta,
        importance_sampling_level="token", top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        use_vllm=False, vllm_importance_sampling_correction=False, aux_loss_enabled=False,
        _entropy_bonus_enabled=False, current_gradient_accumulation_steps=1,
        max_completion_length=max_completion_length,
        model=SimpleNamespace(training=True), accelerator=_Accelerator(), _metrics={"train": defaultdict(list)},
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1),
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None))
    return GRPOTrainer._compute_loss(state, None, inputs)


@pytest.mark.parametrize("loss_type,epsilon,epsilon_high,beta,aggregation", TRL_CASES)
def test_the_objective_equals_trl_s_grpo_loss_and_gradients(loss_type, epsilon, epsilon_high, beta, aggregation):
    pytest.importorskip("trl")
    generator = torch.Generator().manual_seed(0)
    rows, length = 6, 9
    base = -torch.rand(rows, length, generator=generator) * 3
    old = base + torch.randn(rows, length, generator=generator) * 0.3  # off-policy: ratios away from 1, clipping
    ref = base + torch.randn(rows, length, generator=generator) * 0.2
    mask = (torch.rand(rows, length, generator=generator) > 0.25).float()
    mask[:, 0] = 1
    advantages = torch.randn(rows, generator=generator)
    ours_logps = base.clone().requires_grad_(True)
    theirs_logps = base.clone().requires_grad_(True)
    objective = Objective(epsilon_low=epsilon, epsilon_high=epsilon_high, beta=beta, aggregation=aggregation)
    ours, _ = policy_loss(ours_logps, old, advantages, mask, objective, ref_logps=ref if beta else None,
                          max_tokens=length, total_tokens=mask.sum())
    inputs = {"prompt_ids": torch.zeros(rows, 1, dtype=torch.long), "prompt_mask": torch.ones(rows, 1),
              "completion_ids": torch.zeros(rows, length, dtype=torch.long), "completion_mask": mask,
              "advantages": advantages, "old_per_token_logps": old, "num_items_in_batch": mask.sum()}
    if beta:
        inputs["ref_per_token_logps"] = ref
    theirs = _trl_loss(loss_type, epsilon, epsilon_high, beta, theirs_logps, inputs, length)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours_logps.grad, theirs_logps.grad)
    assert ours_logps.grad.abs().sum() > 0


@pytest.mark.parametrize("scale", ["none", "group", "batch"])
def test_group_advantages_follow_trl_s_rule(scale):
    trl_utils = pytest.importorskip("trl.trainer.utils")
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 1.0])
    group = 4
    mean = rewards.view(-1, group).mean(dim=1).repeat_interleave(group)
    std = (trl_utils.nanstd(rewards.view(-1, group), dim=1).repeat_interleave(group) if scale != "batch"
           else trl_utils.nanstd(rewards).expand_as(rewards))
    expected = rewards - mean if scale == "none" else (rewards - mean) / (std + 1e-4)
    torch.testing.assert_close(group_advantages(rewards, group, scale), expected)


def test_objective_options_are_checked():
    with pytest.raises(ValueError):
        Objective(scale_rewards="std")
    with pytest.raises(ValueError):
        Objective(aggregation="mean")
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(5), 2)


PARITY = "def f(x):\n    return x % 2\n"


def _parity_items(path):
    path.write_text("".join(json.dumps({"id": f"parity_{x}", "code": PARITY, "input": str(x), "output": str(x % 2)})
                            + "\n" for x in range(10)))
    return path


@pytest.fixture(scope="module")
def parity_policy(tmp_path_factory):
    """A nano model taught the answer's form (a 0 or a 1, then a newline) with answers drawn at random: it knows
    how to answer a parity prompt, not which answer is right (its reward starts near one half)."""
    from opencwm.eval.registry import benchmark_named
    from opencwm.model import CWM, preset
    from opencwm.tokenizer import Tokenizer

    folder = tmp_path_factory.mktemp("parity")
    items = _parity_items(folder / "items.jsonl")
    prompts = [p.prompt for p in benchmark_named("cruxeval-o", "assert", str(items)).problems()]
    tokenizer = Tokenizer.train([p + a + "\n" for p in prompts for a in "01"] * 4, vocab_size=300)
    model = CWM(preset("nano", **tokenizer.config_fields())).init_weights(seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    draw = random.Random(0)
    for _ in range(120):
        rows = []
        for prompt in draw.choices(prompts, k=16):
            ids = tokenizer.encode(prompt, allow_special=True)
            rows.append((ids, tokenizer.encode(draw.choice("01") + "\n")))
        length = max(len(p) + len(a) for p, a in rows)
        input_ids = torch.zeros(len(rows), length, dtype=torch.long)
        labels = torch.full((len(rows), length), -100)
        for r, (p, a) in enumerate(rows):
            input_ids[r, : len(p) + len(a)] = torch.tensor(p + a)
            labels[r, len(p) - 1 : len(p) + len(a) - 1] = torch.tensor(a)  # position t predicts token t + 1
        loss = model(input_ids, labels=labels) / (labels != -100).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder / "model")
    tokenizer.save(folder / "model")
    return folder / "model", items


def _rl(policy, items, out, *, steps, shuffle=False):
    from opencwm.rl.rollouts import RolloutConfig
    from opencwm.rl.run import EnvironmentSpec, RLConfig, run_rl

    config = RLConfig(init=str(policy), environments=[EnvironmentSpec("cruxeval-o", str(items), "assert",
                                                                        max_tokens=4)],
                      steps=steps, prompts=8, lr=1.5e-3, checkpoint_every=50, seed=0,
                      objective=Objective(scale_rewards="group"),
                      rollout=RolloutConfig(group_size=8, shuffle_rewards=shuffle, seed=0))
    run_rl(config, out, progress=False)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_the_reward_rises_with_the_real_rewards_and_not_with_shuffled_ones(parity_policy, tmp_path):
    policy, items = parity_policy
    real = _rl(policy, items, tmp_path / "real", steps=120)
    shuffled = _rl(policy, items, tmp_path / "shuffled", steps=120, shuffle=True)
    first = sum(row["reward"] for row in real[:5]) / 5
    late = sum(row["reward"] for row in real[-10:]) / 10
    control = sum(row["reward"] for row in shuffled[-10:]) / 10
    print(f"reward: start {first:.2f}, end {late:.2f}; shuffled rewards: end {control:.2f}")
    assert 0.3 <= first <= 0.7  # it answers, at random: a policy that ignores the input gets one half
    assert late >= 0.75 and control <= 0.65


def _cli(*args, cwd):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "opencwm.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ})


@pytest.mark.parametrize("overlap", [False, True])
def test_rl_through_the_cli_writes_metrics_rollouts_and_checkpoints_and_resumes_exactly(parity_policy, tmp_path,
                                                                                      overlap):
    from opencwm.model import CWM

    policy, _ = parity_policy
    made = _cli("rl", "items", "--programs", "12", "--out", "items.jsonl", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    items = [json.loads(line) for line in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert items and all(item["output"] for item in items)  # outputs by real runs
    env = f"cruxeval-o:assert={tmp_path / 'items.jsonl'}@1"
    parity = f"cruxeval-o:assert={parity_policy[1]}@3"
    common = ["--init", str(policy), "--env", env, "--env", parity, "--prompts", "3", "--group", "4",
              "--max-tokens", "6", "--lr", "1e-3", "--checkpoint-every", "1", "--quiet", "--json",
              *(["--overlap"] if overlap else [])]
    straight = _cli("rl", "train", *common, "--steps", "4", "--out", "straight", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    first = _cli("rl", "train", *common, "--steps", "2", "--out", "resumed", cwd=tmp_path)
    second = _cli("rl", "train", *common, "--steps", "4", "--out", "resumed", cwd=tmp_path)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    rows = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("straight", "resumed")}
    assert [r["step"] for r in rows["straight"]] == [1, 2, 3, 4] == [r["step"] for r in rows["resumed"]]
    for key in ("reward", "loss", "samples", "kl", "entropy", "clip_low", "clip_high", "response_tokens"):
        assert [r[key] for r in rows["straight"]] == [r[key] for r in rows["resumed"]], key
    for key in ("reward/cruxeval-o:assert", "seconds_rollout", "seconds_reward", "seconds_update", "groups_dropped"):
        assert key in rows["straight"][-1], key
    weights = [CWM.from_pretrained(tmp_path / name / "checkpoints" / "step-000004" / "model").state_dict()
               for name in ("straight", "resumed")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the same update, resumed or not
    assert not all(torch.equal(weights[0][k], v) for k, v in CWM.from_pretrained(policy).state_dict().items())
    shown = _cli("rl", "show", "straight", "--limit", "2", cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout.count("--- step") == 2 and ">>> " in shown.stdout
    other = _cli("rl", "train", *common, "--steps", "4", "--group", "2", "--out", "straight", cwd=tmp_path)
    assert other.returncode == 2 and "other settings" in other.stderr and other.stderr.count("\n") == 1
    for bad in (["--env", "nope=x.jsonl"], ["--env", "cruxeval-o:assert"], ["--env", "cruxeval-o=missing.jsonl"]):
        wrong = _cli("rl", "train", "--init", str(policy), *bad, "--out", "bad", cwd=tmp_path)
        assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "Traceback" not in wrong.stderr, bad
    missing = _cli("rl", "train", "--init", "nope", "--env", env, "--out", "bad", cwd=tmp_path)
    assert missing.returncode == 2 and "--init nope" in missing.stderr


def test_only_the_model_s_own_tokens_carry_loss(parity_policy):
    """The batch of a step, token by token: the mask covers exactly the positions that predict completion tokens;
    a completion cut at the limit carries none; advantages are the group-relative rewards."""
    from opencwm.model import CWM
    from opencwm.rl.rollouts import update_batch

    model = CWM.from_pretrained(parity_policy[0])
    samples = [{"prompt_ids": [1, 2, 3], "tokens": [7, 8], "reward": 1.0, "overlong": False},
               {"prompt_ids": [1, 2, 3], "tokens": [9, 9, 9, 9], "reward": 0.0, "overlong": True},
               {"prompt_ids": [4, 5], "tokens": [6], "reward": 0.0, "overlong": False},
               {"prompt_ids": [4, 5], "tokens": [6, 6], "reward": 0.0, "overlong": False}]
    batch = update_batch(samples, model, 2, "none")
    assert batch["input_ids"].tolist() == [[1, 2, 3, 7, 8, 0, 0], [1, 2, 3, 9, 9, 9, 9], [4, 5, 6, 0, 0, 0, 0],
                                           [4, 5, 6, 6, 0, 0, 0]]
    # position t predicts token t + 1: the completion [7, 8] after 3 prompt tokens is predicted at positions 2, 3
    assert batch["mask"].tolist() == [[0, 0, 1, 1, 0, 0], [0] * 6, [0, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0]]
    assert batch["advantages"].tolist() == [0.5, -0.5, 0.0, 0.0]
    logits = torch.log_softmax(model(batch["input_ids"])[:, :-1].float(), -1)
    expected = logits.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(batch["old_logps"], expected)


def _recorded_episodes_and_their_masks(tokenizer_folder, tasks) -> list[dict]:
    """Two episodes of a nano policy (room for the agent's conversation) on the first of ``tasks``, recorded, and
    their update batch checked token by token: each turn a row whose loss covers exactly the tokens the model sampled
    in that turn, its prompt (the conversation so far, tool outputs included) never."""
    from opencwm.model import CWM, preset
    from opencwm.rl.environments import Mixture, agent_environment
    from opencwm.rl.objective import Objective
    from opencwm.rl.rollouts import RolloutConfig, RolloutStream, update_batch
    from opencwm.sandbox import SandboxConfig
    from opencwm.sandbox.pool import SandboxPool
    from opencwm.tokenizer import Tokenizer

    tokenizer = Tokenizer.of_checkpoint(tokenizer_folder)
    model = CWM(preset("nano", max_position_embeddings=4096, **tokenizer.config_fields())).init_weights(seed=1)
    env = agent_environment(str(tasks), max_tokens=12, max_turns=2)
    with SandboxPool(SandboxConfig(), 1) as pool:
        stream = RolloutStream(model, tokenizer, Mixture([env]), Objective(), RolloutConfig(group_size=2), pool)
        [group] = stream._groups(1, {"rollout": 0.0, "reward": 0.0}, seed=0)
    assert len(group) == 2 and all(s["env"] == "swe" and s["reward"] in (0.0, 1.0) for s in group)
    assert all(len(s["turns"]) == 2 for s in group)  # the turn budget: an untrained model never submits
    batch = update_batch(group, model, 2, "none")
    turns = [turn for s in group for turn in s["turns"]]
    assert batch["input_ids"].size(0) == len(turns)
    for row, (prompt, sampled) in enumerate(turns):
        assert batch["input_ids"][row, len(prompt) : len(prompt) + len(sampled)].tolist() == sampled
        learned = batch["mask"][row].nonzero().flatten().tolist()
        assert learned == list(range(len(prompt) - 1, len(prompt) + len(sampled) - 1))  # its own tokens only
        assert tokenizer.decode(prompt).count("<|start_header_id|>user") >= 1  # the task, never learned
    assert batch["advantages"].tolist() == [0.0] * len(turns)  # equal rewards: nothing to learn from this group
    return group


def test_agentic_episodes_learn_only_the_model_s_own_tokens(parity_policy, forage_task_dir):
    """RL on forager tasks (the toy repository's) with a local checkpoint: G episodes per task with CWM's tools in
    the sandbox, rewarded by the task's tests; the update learns only the model's own tokens."""
    _recorded_episodes_and_their_masks(parity_policy[0], forage_task_dir)


@pytest.mark.slow
def test_rl_on_a_real_package_s_forager_tasks_through_the_cli(parity_policy, tmp_path):
    """A real PyPI package (inflection 0.5.1): its environment, mutate-fix tasks, recorded episodes with their
    masks checked token by token, then ``opencwm rl train --env swe=TASKS`` with a local checkpoint, end to end."""
    import subprocess
    import sys

    from opencwm.forage.build import build_environment
    from opencwm.forage.tasks import mutate
    from opencwm.model import CWM, preset
    from opencwm.tokenizer import Tokenizer

    env = build_environment("inflection==0.5.1", tmp_path / "envs")
    if not env.ok and "could not download" in env.info.get("error", ""):
        pytest.skip(f"PyPI unreachable: {env.info['error']}")
    assert env.ok, env.info.get("error")
    assert mutate(env, tmp_path / "tasks", max_candidates=6, workers=2).validated >= 1
    group = _recorded_episodes_and_their_masks(parity_policy[0], tmp_path / "tasks")
    assert group[0]["id"].startswith("inflection")  # the real package's task
    tokenizer = Tokenizer.of_checkpoint(parity_policy[0])
    policy = tmp_path / "policy"
    CWM(preset("nano", max_position_embeddings=4096, **tokenizer.config_fields())).init_weights(seed=2) \
        .save_pretrained(policy)
    tokenizer.save(policy)
    ran = subprocess.run([sys.executable, "-m", "opencwm.cli", "rl", "train", "--init", str(policy), "--env",
                          f"swe={tmp_path / 'tasks'}", "--out", str(tmp_path / "run"), "--steps", "1", "--prompts", "1",
                          "--group", "2", "--max-tokens", "12", "--keep-equal-groups", "--quiet", "--json"],
                         capture_output=True, text=True, timeout=1200)
    assert ran.returncode == 0, ran.stderr[-3000:]
    last = json.loads(ran.stdout)
    assert last["step"] == 1 and last["reward/swe"] in (0.0, 0.5, 1.0) and last["response_tokens"] > 0
    shown = subprocess.run([sys.executable, "-m", "opencwm.cli", "rl", "show", str(tmp_path / "run")],
                           capture_output=True, text=True)
    assert shown.returncode == 0 and "swe" in shown.stdout


@pytest.mark.slow  # gVisor starts in seconds (make test-slow)
def test_rl_under_gvisor_gives_bubblewrap_s_rewards_and_update(parity_policy, forage_task_dir, tmp_path):
    """``rl train --sandbox gvisor``: graders and agent episodes (shell and test runs) in gVisor's user-space
    kernel; the same seeded run under bubblewrap gets the same rewards, losses and weights."""
    from conftest import working_backend

    from opencwm.model import CWM

    if not (working_backend("gvisor") and working_backend("bwrap")):
        pytest.skip("needs gVisor (runsc) and bubblewrap")
    policy, items = parity_policy
    runs = {}
    for backend in ("gvisor", "bwrap"):
        ran = _cli("rl", "train", "--init", str(policy), "--env", f"cruxeval-o:assert={items}@2", "--env",
                   f"swe={forage_task_dir}@1", "--steps", "2", "--prompts", "2", "--group", "2", "--max-tokens", "8",
                   "--keep-equal-groups", "--sandbox", backend, "--out", backend, "--quiet", "--json", cwd=tmp_path)
        assert ran.returncode == 0, ran.stderr[-3000:]
        runs[backend] = [json.loads(line) for line in (tmp_path / backend / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in runs["gvisor"]] == [1, 2]
    assert any("reward/swe" in r for r in runs["gvisor"])  # the episodes ran there
    for key in ("reward", "loss", "samples", "response_tokens"):
        assert [r[key] for r in runs["gvisor"]] == [r[key] for r in runs["bwrap"]], key
    final = [CWM.from_pretrained(tmp_path / b / "checkpoints" / "step-000002" / "model").state_dict()
             for b in runs]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])


@pytest.mark.parametrize("aggregation", ["token", "sequence"])
def test_the_update_under_torchrun_equals_one_process_s(tmp_path, aggregation):
    import subprocess
    import sys
    from pathlib import Path

    from opencwm.model import CWM

    job = str(Path(__file__).with_name("distributed_rl_job.py"))
    for name, launcher in (("one", [sys.executable, job]),
                           ("two", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                    "--nproc_per_node=2", job])):
        ran = subprocess.run([*launcher, str(tmp_path / name), aggregation], capture_output=True, text=True,
                             timeout=600)
        assert ran.returncode == 0, ran.stderr[-3000:]
    one, two = (CWM.from_pretrained(tmp_path / name / "checkpoints" / "step-000002" / "model").state_dict()
                for name in ("one", "two"))
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=2e-6, rtol=1e-4)
    initial = CWM.from_pretrained(tmp_path / "one" / "checkpoints" / "step-000002" / "model")
    initial.init_weights(seed=0)  # the job's starting weights: the update moved them
    assert any(not torch.equal(one[key], value) for key, value in initial.state_dict().items())


@pytest.mark.slow
def test_rl_train_under_torchrun(parity_policy, tmp_path):
    """The command itself under torchrun (2 processes, gloo): each rank samples its own rollouts from an
    unsharded copy of the sharded policy, the update is data-parallel, rank 0 writes checkpoints and metrics."""
    import subprocess
    import sys

    policy, items = parity_policy
    ran = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                          "opencwm.cli", "rl", "train", "--init", str(policy), "--env", f"cruxeval-o:assert={items}",
                          "--out", str(tmp_path / "run"), "--steps", "3", "--prompts", "4", "--group", "4",
                          "--max-tokens", "4", "--lr", "1e-3", "--checkpoint-every", "3", "--quiet", "--json"],
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert [json.loads(line)["step"] for line in ran.stdout.strip().splitlines()] == [3]  # rank 0 speaks
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all("kl" in r for r in rows)
    assert (tmp_path / "run" / "checkpoints" / "step-000003" / "model" / "config.json").is_file()
