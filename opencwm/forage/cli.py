"""``opencwm forage``: environments, tasks and trajectories from the command line.

    opencwm forage env more-itertools==10.5.0 --cache runs/envs [--json]
    opencwm forage mutate runs/envs/more-itertools-10.5.0-... --out runs/tasks --max 200 [--json]
    opencwm forage env path/to/repo --commit SHA       (a git repository: its history kept, built at SHA)
    opencwm forage import instances.jsonl --repo path/to/repo --out runs/swe-tasks
    opencwm forage grade predictions.jsonl --tasks runs/swe-tasks --out runs/swe-grade
    opencwm forage run runs/tasks --policy openai --base-url http://localhost:8000/v1 --model cwm --out runs/traj
    opencwm forage show runs/traj [--limit N] [--id TASK]

With ``--json`` a command prints one JSON summary on stdout (progress and messages go to stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from opencwm.errors import CompleterUnavailable, one_line
from opencwm.errors import UsageError as CliError

POLICIES = ("openai", "local", "scripted", "oracle", "inverse", "empty")


def _say(message: str) -> None:
    print(f"[forage] {message}", file=sys.stderr, flush=True)


def _bar(total_label: str, quiet: bool):
    """A progress callback (done, total) drawing a tqdm bar on stderr."""
    if quiet:
        return None
    from tqdm import tqdm

    state = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=total_label, unit="item", file=sys.stderr)
        state["bar"].update(done - state["bar"].n)
        if done == total:
            state["bar"].close()

    return update


def _environment(args):
    """The built environment ``args.env`` names (a directory, or a source looked up in ``args.cache``)."""
    from opencwm.forage.build import default_cache, find_environment
    from opencwm.forage.environment import ForageError

    try:
        return find_environment(args.env, args.cache or default_cache())
    except ForageError as exc:
        raise CliError(str(exc)) from None


def cmd_env(args) -> int:
    from opencwm.forage.build import build_environment, default_cache
    from opencwm.forage.environment import ForageError

    try:
        env = build_environment(args.source, args.cache or default_cache(), python=args.python, backend=args.sandbox,
                                rebuild=args.rebuild, progress=None if args.quiet else _say, commit=args.commit)
    except ForageError as exc:
        raise CliError(str(exc)) from None
    info = env.info
    summary = {"env": str(env.path), "tests": len(info.get("tests", {})), "passing": info.get("passing", 0),
               "flaky": len(info.get("flaky", []))}
    if not env.ok:
        summary["error"] = info.get("error")
        again = " (an earlier build's failure, kept in the cache: --rebuild tries again)" if env.reused else ""
        if args.json:
            print(json.dumps(summary))
        print(f"opencwm: build failed ({env.path}/env.json): {info.get('error')}{again}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary))
    else:
        covered = len(info.get("coverage", {}))
        print(f"{env.path}: {summary['tests']} tests, {summary['passing']} passing, {summary['flaky']} flaky; "
              f"{covered} functions covered by tests (built in {info.get('build_seconds')} s)")
    return 0


def cmd_mutate(args) -> int:
    from opencwm.forage.mutate import OPERATORS
    from opencwm.forage.tasks import mutate

    env = _environment(args)
    operators = tuple(args.operators.split(",")) if args.operators else OPERATORS
    unknown = set(operators) - set(OPERATORS)
    if unknown:
        raise CliError(f"unknown operators {', '.join(sorted(unknown))} (choose from {', '.join(OPERATORS)})")
    from opencwm.forage.policies import OpenAIPolicy, PolicyUnavailable

    writer = None
    if args.issue_base_url:
        if not args.issue_model:
            raise CliError("--issue-base-url needs --issue-model")
        writer = OpenAIPolicy(args.issue_base_url, args.issue_model, api_key=args.api_key, max_tokens=400)
    elif args.issue_model:
        writer = _local_policy(args.issue_model, None, max_tokens=400, temperature=0.0, option="--issue-model")
    try:
        report = mutate(env, args.out, max_candidates=args.max, workers=args.workers, operators=operators,
                        timeout=args.timeout, backend=args.sandbox, progress=_bar("validating", args.quiet),
                        issue_writer=writer, confirm=args.confirm)
    except PolicyUnavailable as exc:
        raise CliError(f"the issue writer cannot answer: {one_line(str(exc), 300)}; the candidates validated "
                       f"so far are kept in {args.out} (run again to go on)") from None
    if args.json:
        print(json.dumps(report.as_json()))
    else:
        print(f"{report.tasks}: {report.validated} validated tasks of {report.candidates} candidates "
              f"({', '.join(f'{v} {k}' for k, v in report.verdicts.items())})")
        for operator, counts in report.per_operator.items():
            print(f"  {operator:18} {counts.get('validated', 0):5} / {counts['candidates']}")
    if report.errors:
        reason, count = report.reasons[0]
        print(f"opencwm: {report.errors} of {report.candidates} candidates got no verdict (their test run failed); "
              f"most common reason ({count}x): {reason}", file=sys.stderr)
    return 1 if report.errors and report.errors == report.candidates else 0


def _repositories(values: list[str]) -> dict:
    """``--repo [OWNER/NAME=]PATH`` values: the local git repository of each instance repository (no name: every
    instance's)."""
    repos = {}
    for value in values:
        name, _, path = value.rpartition("=") if "=" in value else (None, "", value)
        if not (Path(path) / ".git").exists():
            raise CliError(f"--repo {value}: {path} is not a git repository (a directory with .git)")
        repos[name or None] = Path(path).resolve()
    return repos


def cmd_import(args) -> int:
    from opencwm.forage.build import default_cache
    from opencwm.forage.environment import ForageError
    from opencwm.forage.swebench import import_instances

    repos = _repositories(args.repo)
    try:
        summary = import_instances(args.file, repos, args.cache or default_cache(), args.out, backend=args.sandbox,
                                   timeout=args.timeout, progress=_bar("validating", args.quiet),
                                   say=None if args.quiet else _say)
    except ForageError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{args.out}: {summary['validated']} of {summary['instances']} instances validated "
              f"({', '.join(f'{v} {k}' for k, v in summary['verdicts'].items())})")
        for item, why in summary["not_validated"].items():
            print(f"  {item}: {why}")
    return 0 if summary["validated"] else 1


def cmd_grade(args) -> int:
    from opencwm.forage.environment import ForageError
    from opencwm.forage.swebench import grade
    from opencwm.forage.tasks import read_tasks
    from opencwm.shards import DatasetError

    try:
        tasks = read_tasks(args.tasks)
        summary = grade(args.predictions, tasks, args.out, backend=args.sandbox, timeout=args.timeout,
                        progress=_bar("grading", args.quiet))
    except (ForageError, DatasetError) as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{args.out}/report.json: {summary['resolved_instances']} of {summary['submitted_instances']} "
              f"submitted instances resolved ({summary['unresolved_instances']} unresolved, "
              f"{summary['empty_patch_instances']} empty patches, {summary['error_instances']} patches that do not "
              f"apply)")
    if summary["unknown_ids"]:
        print(f"opencwm: {len(summary['unknown_ids'])} predictions name instances not in {args.tasks} "
              f"(first: {summary['unknown_ids'][0]})", file=sys.stderr)
    return 0


def _local_policy(model: str, tokenizer: str | None, *, max_tokens: int, temperature: float, option: str):
    """A policy over a local checkpoint (CWM's chat format, no reasoning), or a one-line error."""
    from opencwm.forage import policies

    if not (Path(model) / "config.json").is_file():
        raise CliError(f"{option} {model}: not a checkpoint model directory (no config.json)")
    from opencwm.infer.local import LocalCompleter  # (the command line: above every area)

    try:
        completer = LocalCompleter.from_checkpoint(model, tokenizer=tokenizer)
    except CompleterUnavailable as exc:
        raise CliError(f"{option} {one_line(str(exc), 300)}") from None
    return policies.CompleterPolicy(completer, name="local", think=False, max_tokens=max_tokens,
                                    temperature=temperature)


def _policy_factory(args):
    from opencwm.forage import policies

    if args.policy == "openai":
        if not args.base_url or not args.model:
            raise CliError("--policy openai needs --base-url and --model")
        shared = policies.OpenAIPolicy(args.base_url, args.model, api_key=args.api_key,
                                       temperature=args.temperature, max_tokens=args.max_new_tokens)
        return lambda task: shared
    if args.policy == "local":
        if not args.model:
            raise CliError("--policy local needs --model CHECKPOINT_MODEL_DIR")
        shared = _local_policy(args.model, args.tokenizer, max_tokens=args.max_new_tokens,
                               temperature=args.temperature, option="--model")
        return lambda task: shared
    if args.policy == "scripted":
        if not args.script:
            raise CliError("--policy scripted needs --script FILE.jsonl (one assistant turn per line)")
        try:
            turns = policies.read_script(args.script)
        except ValueError as exc:
            raise CliError(f"--script {exc}") from None
        return lambda task: policies.ScriptedPolicy(turns)
    if args.policy == "inverse":
        return policies.InverseMutationPolicy
    if args.policy == "oracle":
        return policies.OraclePolicy

    def empty(task):
        policy = policies.ScriptedPolicy([])
        policy.name = "empty"
        return policy

    return empty


def cmd_run(args) -> int:
    from opencwm.forage.agent import EpisodeBudget
    from opencwm.forage.environment import ForageError
    from opencwm.forage.tasks import read_tasks
    from opencwm.forage.trajectory import run_episodes
    from opencwm.shards import DatasetError

    try:
        tasks = read_tasks(args.tasks)[: args.max]
    except (ForageError, DatasetError) as exc:
        raise CliError(str(exc)) from None
    make_policy = _policy_factory(args)
    if args.policy == "inverse":
        tasks = [t for t in tasks if t["task_kind"] == "mutate-fix"]
    budget = EpisodeBudget(max_turns=args.max_turns, max_tokens=args.max_tokens, max_seconds=args.max_seconds,
                           command_timeout=args.command_timeout)
    try:
        summary = run_episodes(tasks, make_policy, args.out, budget=budget, workers=args.workers,
                               backend=args.sandbox, ray_address=args.ray, progress=_bar("episodes", args.quiet))
    except ForageError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['trajectories']}: {summary['episodes']} episodes, {summary['solved']} solved")
    return 0


def cmd_show(args) -> int:
    from opencwm.forage.environment import ForageError
    from opencwm.forage.trajectory import read_trajectories, replay
    from opencwm.shards import DatasetError

    try:
        rows = read_trajectories(args.trajectories)
    except (ForageError, DatasetError) as exc:
        raise CliError(str(exc)) from None
    if args.id:
        rows = [r for r in rows if args.id in (r["task_id"], r["item"])]
        if not rows:
            raise CliError(f"no trajectory of task {args.id} in {args.trajectories}")
    solved = sum(bool(r["solved"]) for r in rows)
    print(f"{args.trajectories}: {len(rows)} episodes, {solved} solved")
    for row in rows[: args.limit]:
        print()
        print(replay(row))
    return 0


def _add_cache(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", help="environment cache directory (default: $OPENCWM_CACHE/envs, else "
                                        "$XDG_CACHE_HOME/opencwm/envs, i.e. ~/.cache/opencwm/envs)")


ENV_HELP = "an environment directory, or the source it was built from (as for 'forage env'), found in --cache"


def add_parser(areas) -> None:
    from opencwm.forage.environment import CONFIRM

    forage = areas.add_parser("forage", help="ForagerAgent: repository environments, mutate-fix tasks, agent "
                                             "trajectories")
    commands = forage.add_subparsers(dest="command", metavar="COMMAND", required=True)

    env = commands.add_parser("env", help="build (or reuse) the executable environment of a repository")
    env.add_argument("source", help="a local repository directory or a PyPI source distribution name==version")
    _add_cache(env)
    env.add_argument("--python", default=sys.executable, help="interpreter for the environment's venv")
    env.add_argument("--rebuild", action="store_true", help="build again even if cached")
    env.add_argument("--commit", help="for a git repository: build at this commit (a hash, tag or branch); the "
                                      "history is kept (default: as checked out, uncommitted changes included)")
    _common(env)
    env.set_defaults(func=cmd_env)

    mutate = commands.add_parser("mutate", help="generate and validate mutate-fix tasks of an environment")
    mutate.add_argument("env", help=ENV_HELP)
    _add_cache(mutate)
    mutate.add_argument("--out", required=True, help="task dataset directory (created or resumed)")
    mutate.add_argument("--max", type=int, help="at most this many candidates")
    mutate.add_argument("--operators", help="comma-separated subset of the mutation operators")
    mutate.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="validations in parallel")
    mutate.add_argument("--timeout", type=float, default=120, help="seconds per validation run")
    mutate.add_argument("--confirm", choices=CONFIRM, default=CONFIRM[0],
                        help="when a candidate's covering tests all pass, whether the whole suite decides: only "
                             "for order-dependent statements (code run for whichever test comes first; default), "
                             "always (slowest), or never (fastest; may miss a bug that only other tests see)")
    mutate.add_argument("--issue-base-url", help="write issue texts with the model at this OpenAI-compatible "
                                                 "endpoint, from the bug's diff and the failing tests (default: a "
                                                 "plain description from the failing tests); a text that holds a "
                                                 "line of the fix is replaced by the plain one")
    mutate.add_argument("--issue-model", help="model name for --issue-base-url, or without it a local checkpoint's "
                                              "model directory that writes the issue texts")
    mutate.add_argument("--api-key", default="EMPTY", help="API key for --issue-base-url")
    _common(mutate)
    mutate.set_defaults(func=cmd_mutate)

    imp = commands.add_parser("import", help="import and validate SWE-bench-format instances (one environment "
                                             "per repository and base_commit)")
    imp.add_argument("file", help="SWE-bench instances: JSONL or a JSON list (instance_id, repo, base_commit, "
                                  "patch, test_patch, problem_statement, FAIL_TO_PASS, PASS_TO_PASS)")
    imp.add_argument("--repo", action="append", required=True, metavar="[OWNER/NAME=]PATH",
                     help="the local git repository of the instances' repo (repeat for several repositories; "
                          "without a name it serves every instance)")
    _add_cache(imp)
    imp.add_argument("--out", required=True, help="task dataset directory (created or resumed)")
    imp.add_argument("--timeout", type=float, default=900, help="seconds per test run")
    _common(imp)
    imp.set_defaults(func=cmd_import)

    grade = commands.add_parser("grade", help="grade SWE-bench-format predictions on imported or mutate-fix tasks")
    grade.add_argument("predictions", help="JSONL or JSON list of {instance_id, model_name_or_path, model_patch}")
    grade.add_argument("--tasks", required=True, help="task dataset directory ('forage import' or 'forage mutate')")
    grade.add_argument("--out", required=True, help="report directory: report.json, and per instance its patch, "
                                                    "test log and report (resumable)")
    grade.add_argument("--timeout", type=float, default=900, help="seconds per test run")
    _common(grade)
    grade.set_defaults(func=cmd_grade)

    run = commands.add_parser("run", help="play episodes of a policy on tasks and store the trajectories")
    run.add_argument("tasks", help="task dataset directory")
    run.add_argument("--out", required=True, help="trajectory dataset directory (created or resumed)")
    run.add_argument("--policy", choices=POLICIES, default="openai",
                     help="who acts: a served model (openai), a checkpoint (local), a script, or a check")
    run.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    run.add_argument("--model", help="model name at the endpoint, or a checkpoint model directory (local)")
    run.add_argument("--api-key", default="EMPTY", help="API key of the endpoint")
    run.add_argument("--tokenizer", help="tokenizer directory for --policy local")
    run.add_argument("--script", help='--policy scripted: JSONL of assistant turns, each a JSON string or '
                                      '{"tool": "bash", "args": "pytest -q"}; then submit')
    run.add_argument("--temperature", type=float, default=0.0, help="sampling temperature")
    run.add_argument("--max-new-tokens", type=int, default=2048, help="per assistant turn")
    run.add_argument("--max", type=int, help="at most this many tasks")
    run.add_argument("--max-turns", type=int, default=30, help="assistant turns per episode")
    run.add_argument("--max-tokens", type=int, default=65_536, help="per episode")
    run.add_argument("--max-seconds", type=float, default=900, help="wall time per episode")
    run.add_argument("--command-timeout", type=float, default=120, help="seconds per bash command")
    run.add_argument("--workers", type=int, default=1, help="episodes in parallel")
    run.add_argument("--ray", metavar="ADDRESS", help='spread episodes over a Ray cluster ("local" starts one)')
    _common(run)
    run.set_defaults(func=cmd_run)

    show = commands.add_parser("show", help="replay trajectories readably")
    show.add_argument("trajectories")
    show.add_argument("--limit", type=int, default=1, help="episodes to replay")
    show.add_argument("--id", help="the trajectory of this task")
    show.set_defaults(func=cmd_show)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.add_argument("--sandbox", default="auto",
                        choices=["auto", "bwrap", "unshare", "rlimits", "gvisor", "docker"],
                        help="where tests run: the local sandbox (default: the best backend that works here) or "
                             "Docker (test runs and the agent's shell in containers; needs an engine: "
                             "Debian's docker.io)")
