"""The agent loop: one episode of a policy on a task, with CWM's tools (SPEC §3) in the sandbox.

The work tree (the task's ``base_commit``, fresh for every episode) is the only directory the agent's commands may
write; the network is off; each ``bash`` command has a timeout and its output is truncated with a marker. ``edit``
and ``create`` are carried out by the host on paths that must resolve inside the work tree. One tool call per
assistant turn, parsed by the chat codec; a malformed call gets an error observation and the episode goes on.

When the agent submits (or a budget runs out) the work tree's diff against ``base_commit`` is the patch; it is
applied to another fresh work tree and the task's ``FAIL_TO_PASS`` + ``PASS_TO_PASS`` tests decide the reward
(1.0 when all pass, else 0.0).
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from opencwm.chat import ChatFormatError, parse_create, parse_edit, parse_tool_call, tool_role
from opencwm.forage.docker import DockerShell
from opencwm.forage.environment import Environment
from opencwm.forage.policies import Policy, PolicyUnavailable
from opencwm.forage.verdicts import instance_report, run_instance, test_lists
from opencwm.sandbox.shell import Shell, truncate_output

SYSTEM_PROMPT = """You are an autonomous software engineer working in a Python repository at {tree}.
Fix the problem the user describes. Use exactly one tool per turn, written as

<tool: NAME>
ARGS
</tool>

Tools:
- bash: run one non-interactive shell command or script in a persistent session (no network; {timeout:.0f} s
  per command; long outputs are truncated). The repository's tests run with `python -m pytest`.
- edit: edit a file. ARGS: the file's path on the first line, then one or more blocks
<<<<<<< SEARCH
exact existing lines
=======
their replacement
>>>>>>> REPLACE
- create: create a new file. ARGS: its path on the first line, then its content.
- submit: finish; your changes to the repository are the solution (ARGS empty).
"""


@dataclass
class EpisodeBudget:
    max_turns: int = 30
    max_tokens: int = 65_536  # prompt + completion tokens the policy reports over the episode
    max_seconds: float = 900.0
    command_timeout: float = 120.0
    max_output: int = 8_000
    memory_mb: int = 8192  # the bash session's whole process tree
    disk_mb: int = 1024  # its private /tmp, what it may add to the repository (run as root), any one file


class Tools:
    """CWM's agentic tools acting on one work tree."""

    def __init__(self, tree: Path, shell: Shell, budget: EpisodeBudget):
        self.tree, self.shell, self.budget = tree.resolve(), shell, budget

    def _path(self, name: str) -> Path:
        path = (self.tree / name).resolve()  # symlinks followed: a link out of the tree is refused
        if (path != self.tree and self.tree not in path.parents) or ".git" in path.relative_to(self.tree).parts:
            raise ChatFormatError(f"{name}: outside the repository")
        return path

    def bash(self, args: str) -> tuple[str, str]:
        result = self.shell.run(args, timeout=self.budget.command_timeout)
        output = truncate_output(result.output, self.budget.max_output)
        if result.status == "timeout":
            return "timeout", f"{output}\n[the command timed out after {self.budget.command_timeout:.0f} s and " \
                              "was killed; the shell was restarted in the repository root]"
        if result.status == "killed":
            return "killed", f"{output}\n[the shell exited; a new one starts in the repository root]"
        if result.status == "memory":
            return "memory", f"{output}\n[exit code {result.returncode}; a process ran past the memory limit " \
                             f"({self.budget.memory_mb} MB) and was killed]"
        if result.status == "disk":
            return "disk", f"{output}\n[exit code {result.returncode}; the disk is full: /tmp or the repository " \
                           f"(each may take {self.budget.disk_mb} MB)]"
        return "ok", f"{output}\n[exit code {result.returncode}]"

    def edit(self, args: str) -> tuple[str, str]:
        name, blocks = parse_edit(args)
        relative = self._path(name).relative_to(self.tree)
        try:
            with _open_beneath(self.tree, relative, os.O_RDONLY) as handle:
                text = handle.read().decode("utf-8")
        except FileNotFoundError:
            raise ChatFormatError(f"{name}: no such file (use create for new files)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ChatFormatError(f"{name}: cannot be edited ({_reason(exc)})") from None
        for old, new in blocks:
            count = text.count(old)
            if count != 1:
                raise ChatFormatError(f"{name}: the SEARCH text occurs {count} times (it must occur exactly once)")
            text = text.replace(old, new, 1)
        try:
            with _open_beneath(self.tree, relative, os.O_WRONLY | os.O_TRUNC) as handle:
                handle.write(text.encode("utf-8"))
        except OSError as exc:
            raise ChatFormatError(f"{name}: cannot be edited ({_reason(exc)})") from None
        return "ok", f"{name}: {len(blocks)} block(s) replaced"

    def create(self, args: str) -> tuple[str, str]:
        name, content = parse_create(args)
        relative = self._path(name).relative_to(self.tree)
        try:
            with _open_beneath(self.tree, relative, os.O_WRONLY | os.O_CREAT | os.O_EXCL, make_dirs=True) as handle:
                handle.write(content.encode("utf-8"))
        except FileExistsError:
            raise ChatFormatError(f"{name}: already exists (use edit)") from None
        except OSError as exc:
            raise ChatFormatError(f"{name}: cannot be created ({_reason(exc)})") from None
        return "ok", f"{name}: created ({len(content)} characters)"


def _reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__


def _open_beneath(root: Path, relative: Path, flags: int, *, make_dirs: bool = False):
    """A regular file ``root/relative``, opened without following any symbolic link on the way: the agent's
    processes run while the host edits, and a link swapped in after the path was checked must not lead the host
    out of the tree. Anything but a regular file (a FIFO would block the host) is refused."""
    if not relative.parts:
        raise IsADirectoryError(21, "Is a directory")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in relative.parts[:-1]:
            if make_dirs:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            parent, fd = fd, os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(parent)
        file_fd = os.open(relative.parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
        os.close(file_fd)
        raise OSError(22, "not a regular file")
    os.set_blocking(file_fd, True)
    return os.fdopen(file_fd, "rb" if flags & (os.O_WRONLY | os.O_RDWR) == 0 else "wb")


def evaluate_patch(env: Environment, task: dict, patch: str, *, backend: str = "auto",
                   timeout: float = 900) -> tuple[float, dict[str, str]]:
    """(reward, outcome of each deciding test) of ``patch`` applied to a fresh work tree of the task (its test
    patch applied after it, as SWE-bench grades): 1.0 when SWE-bench's rules call the instance resolved, read on
    the tests' exact node ids."""
    evaluation = run_instance(env, task, patch, backend=backend, timeout=timeout)
    if not evaluation.applied:
        return 0.0, {"<patch>": "does not apply"}
    run = evaluation.run
    tests = [t for part in test_lists(task) for t in part]
    outcomes = {t: run.outcomes.get(t, "missing" if run.status == "ok" else run.status) for t in tests}
    resolved = instance_report(task, patch, evaluation, as_logged=False)[task["instance_id"]]["resolved"]
    return float(bool(tests) and resolved), outcomes


def run_episode(env: Environment, task: dict, policy: Policy, budget: EpisodeBudget | None = None, *,
                backend: str = "auto") -> dict:
    """Play one episode; returns its trajectory record (see ``opencwm.forage.trajectory``)."""
    budget = budget or EpisodeBudget()
    start = time.monotonic()
    tree = env.checkout(task["base_commit"], disk_mb=budget.disk_mb)
    if backend == "docker":  # the bash session in a container of the environment's image
        shell = DockerShell(env, tree, environment=env.sandbox_env(tree), memory_mb=budget.memory_mb,
                            disk_mb=budget.disk_mb, max_output=budget.max_output * 4)
    else:
        shell = Shell(tree, env=env.sandbox_env(tree), backend=backend, visible=(str(env.path),),
                      protected=(str(tree / ".git"),), memory_mb=budget.memory_mb, disk_mb=budget.disk_mb,
                      max_output=budget.max_output * 4)
    tools = Tools(tree, shell, budget)
    messages = [{"role": "system", "content": SYSTEM_PROMPT.format(tree=tree, timeout=budget.command_timeout)},
                {"role": "user", "content": task["problem_statement"]}]
    actions: list[dict] = []
    prompt_tokens = completion_tokens = 0
    status = "turn_budget"
    try:
        for turn in range(budget.max_turns):
            if time.monotonic() - start > budget.max_seconds:
                status = "time_budget"
                break
            try:
                reply = policy(messages)
            except PolicyUnavailable:  # no answer at all: not an outcome, the episode is played again later
                raise
            except Exception as exc:  # a server error ends the episode, recorded, not raised
                status = f"policy_error: {type(exc).__name__}: {str(exc)[:200]}"
                break
            messages.append({"role": "assistant", "content": reply.text})
            prompt_tokens += reply.prompt_tokens or 0
            completion_tokens += reply.completion_tokens or 0
            action_start = time.monotonic()
            try:
                call = parse_tool_call(reply.text)
            except ChatFormatError as exc:
                action = {"turn": turn, "tool": None, "args": None, "status": "invalid", "observation": str(exc)}
                name = "error"
            else:
                name = call.name
                action = {"turn": turn, "tool": call.name, "args": call.args}
                if call.name == "submit":
                    action.update(status="ok", observation="", seconds=0.0)
                    actions.append(action)
                    status = "submitted"
                    break
                try:
                    action["status"], action["observation"] = getattr(tools, call.name)(call.args)
                except ChatFormatError as exc:
                    action["status"], action["observation"] = "error", f"error: {exc}"
            action["seconds"] = round(time.monotonic() - action_start, 3)
            actions.append(action)
            if prompt_tokens + completion_tokens > budget.max_tokens:
                status = "token_budget"
                break
            left = (f"\n\n[{budget.max_turns - turn - 1} turns left; "
                    f"{max(0, budget.max_tokens - prompt_tokens - completion_tokens)} tokens left]")
            messages.append({"role": tool_role(name), "content": action["observation"] + left})
        patch = env.diff(tree, task["base_commit"])
    finally:
        shell.close()
        Environment.discard(tree)
    episode_seconds = time.monotonic() - start
    reward, results = evaluate_patch(env, task, patch, backend=backend)
    return {
        "item": f"{task['instance_id']}:{policy.name}", "task_id": task["instance_id"],
        "task_kind": task.get("task_kind") or "", "env": str(env.path), "policy": policy.name,
        "messages": json.dumps(messages), "actions": json.dumps(actions), "test_results": json.dumps(results),
        "diff": patch, "reward": reward, "solved": reward == 1.0, "status": status, "turns": len(actions),
        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "episode_seconds": round(episode_seconds, 3), "seconds": round(time.monotonic() - start, 3),
        "task": json.dumps({k: v for k, v in task.items() if k not in ("problem_statement",)}),
    }
