"""Trajectories: episodes stored as Parquet shards with a manifest (resumable like trace collection), a readable
replay, and the one function that turns a trajectory into CWM-format training text.

Each row: the task and policy, ``messages`` (CWM chat roles, JSON), ``actions`` (tool, args, status,
observation, seconds per turn, JSON), ``test_results`` (each deciding test's outcome, JSON), the final ``diff``,
``reward`` and ``solved``, how the episode ended (``status``), timings and token counts, and the task (JSON).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa

from opencwm.errors import terminal_text
from opencwm.forage.agent import EpisodeBudget, run_episode
from opencwm.forage.environment import Environment, ForageError
from opencwm.forage.policies import Policy, PolicyUnavailable
from opencwm.shards import TRAJECTORIES_KIND, ShardWriter, read_manifest, read_rows

KIND = TRAJECTORIES_KIND
SCHEMA = pa.schema([
    ("item", pa.string()), ("task_id", pa.string()), ("task_kind", pa.string()), ("env", pa.string()),
    ("policy", pa.string()), ("messages", pa.string()), ("actions", pa.string()), ("test_results", pa.string()),
    ("diff", pa.string()), ("reward", pa.float64()), ("solved", pa.bool_()), ("status", pa.string()),
    ("turns", pa.int32()), ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
    ("episode_seconds", pa.float64()), ("seconds", pa.float64()), ("task", pa.string()),
])


def run_episodes(tasks: list[dict], make_policy: Callable[[dict], Policy], out: str | Path, *,
                 budget: EpisodeBudget | None = None, workers: int = 1, backend: str = "auto",
                 ray_address: str | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Play every task once with the policy ``make_policy(task)`` and store the trajectories (resumable: tasks
    already in ``out`` for this policy are skipped). Returns ``{"trajectories", "episodes", "solved"}``."""
    environments: dict[str, Environment] = {}
    for task in tasks:
        if task["env"] not in environments:
            path = Path(task["env"])
            if not (path / "env.json").exists():
                raise ForageError(f"{path}: the task's environment is missing (rebuild it with 'opencwm forage env')")
            environments[task["env"]] = Environment.open(path)
    with ShardWriter(out, SCHEMA, KIND, rows_per_shard=200) as writer:
        done = writer.finished_items()
        todo = [t for t in tasks if f"{t['instance_id']}:{make_policy(t).name}" not in done]

        def play(task: dict) -> dict:
            return run_episode(environments[task["env"]], task, make_policy(task), budget, backend=backend)

        pool = None
        if ray_address:
            results = _ray_map(play, todo, ray_address, workers)
        else:
            pool = ThreadPoolExecutor(max(1, workers))
            results = pool.map(play, todo)
        count = 0
        try:
            for count, row in enumerate(results, 1):
                writer.add(row["item"], [row])
                if progress:
                    progress(count, len(todo))
        except PolicyUnavailable as exc:  # finished episodes are kept; the rest are played on a rerun
            raise ForageError(f"the policy cannot answer: {exc}; the {count} episodes finished now are kept in "
                              f"{out}, a rerun plays the other {len(todo) - count}") from None
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    rows = list(read_rows(out, columns=["solved"]))
    return {"trajectories": str(out), "episodes": len(rows), "solved": sum(bool(r["solved"]) for r in rows)}


def _ray_map(fn, items: list, address: str, workers: int):
    from opencwm.ray_cluster import connect

    ray = connect(address, workers)
    remote = ray.remote(num_cpus=1)(fn)
    refs = [remote.remote(item) for item in items]
    while refs:
        done, refs = ray.wait(refs, num_returns=1)
        yield ray.get(done[0])


def read_trajectories(directory: str | Path) -> list[dict]:
    if read_manifest(directory).get("kind") != KIND:
        raise ForageError(f"{directory}: not a trajectory dataset (made by 'opencwm forage run')")
    return list(read_rows(directory))


def replay(trajectory: dict, width: int = 100) -> str:
    """A readable replay of an episode: every message, the final diff, and the deciding tests (those that did not
    pass by name, the passing ones by count); no escape sequence of theirs reaches the terminal."""
    lines = [f"task {trajectory['task_id']} ({trajectory['task_kind']}) - policy {trajectory['policy']} - "
             f"{trajectory['status']} after {trajectory['turns']} turns, reward {trajectory['reward']}, "
             f"{trajectory['seconds']:.1f} s", "=" * width]
    for message in json.loads(trajectory["messages"]):
        lines += [f"[{message['role']}]", message["content"].rstrip(), "-" * width]
    results = json.loads(trajectory["test_results"])
    passed = sum(outcome == "passed" for outcome in results.values())
    lines += ["final diff:", trajectory["diff"].rstrip() or "(empty)", "-" * width,
              f"deciding tests: {passed} of {len(results)} passed"]
    lines += [f"  {outcome:8} {test}" for test, outcome in results.items() if outcome != "passed"]
    return terminal_text("\n".join(lines))  # messages and diffs hold what programs and a model wrote
