"""The README's commands as a table (``COMMANDS``: which tier runs each and what its output must show) and the
walkthrough that runs them as written, in the README's order, from a fresh directory laid out like a checkout
(``examples/`` and ``.venv/`` linked in, and the user's own files the README names made here). Used by
``test_readme.py`` and by the ``readme_walkthrough`` fixture, whose trained demo model the debugger's slow tests
reuse."""


from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

from chat_endpoint import ScriptedChat
from release_repo import instance, make_release_repo, write_jsonl

REPO = Path(__file__).resolve().parent.parent
FAST, SLOW = "fast", "slow"


def readme_commands(text: str) -> list[str]:
    """The commands of the README's ``sh`` blocks as written, continuation lines joined and comments dropped."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            command = _strip_comment(line).strip()
            if command:
                commands.append(command)
    return commands


def name(command: str) -> str:
    """A command's name in ``COMMANDS``: its words, single-spaced."""
    return " ".join(command.split())


def _strip_comment(line: str) -> str:
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def _json(out: str):
    return json.loads(out.strip().splitlines()[-1])


@dataclass
class Step:
    tier: str | None  # FAST, SLOW, or None: not run (``why`` says why and what checks it instead)
    check: Callable[[subprocess.CompletedProcess, Path], bool] | None = None
    why: str = ""


SPEEDRUN = "not run: it is `make run` (30 min); tests/test_speedrun.py runs the speedrun command at toy size"
COMMANDS: dict[str, Step] = {
    "make run": Step(None, why="not run: the speedrun itself (30 min on 2 cores)"),
    "make test": Step(None, why="not run: CI runs it (and this test is part of it)"),
    "opencwm trace run examples/bank.py": Step(FAST, lambda r, d: r.stdout.startswith("trace of main(100, ")),
    'opencwm trace run prog.py --call "f(1, [2, 3])" --format cwm':
        Step(FAST, lambda r, d: r.stdout.startswith("<|begin_of_text|>") and '"6"' in r.stdout),
    'opencwm trace run prog.py --call "f(3)" --format json':
        Step(FAST, lambda r, d: json.loads(r.stdout)["call"] == "f(3)" and json.loads(r.stdout)["status"] == "ok"),
    "opencwm trace collect data.jsonl --out runs/traces": Step(FAST, lambda r, d: _json(r.stdout)["traces"] == 5),
    'opencwm trace collect prog.py --call "f(1)" --call "f(2)" --out runs/prog-traces':
        Step(FAST, lambda r, d: _json(r.stdout)["traces"] == 2),
    "opencwm trace collect path/to/repo --out runs/repo-traces": Step(FAST, lambda r, d: _json(r.stdout)["traces"] > 0),
    "opencwm trace collect data.jsonl --out runs/traces-ray --ray local":
        Step(SLOW, lambda r, d: _json(r.stdout)["traces"] == 5),
    "opencwm trace collect data.jsonl --out runs/traces-313 --python ~/.pyenv/versions/3.13.0/bin/python3.13":
        Step(SLOW, lambda r, d: _json(r.stdout)["traces"] == 5),
    "opencwm trace show runs/traces --limit 2": Step(FAST, lambda r, d: r.stdout.count("\n=== sample_") == 2),
    "opencwm trace show runs/traces --id sample_3 --format cwm":
        Step(FAST, lambda r, d: "=== sample_3" in r.stdout and "<|begin_of_text|>" in r.stdout),
    "opencwm trace show runs/traces --list --status ok --format json":
        Step(FAST, lambda r, d: [json.loads(x)["status"] for x in r.stdout.splitlines()] == ["ok"] * 5),
    "opencwm sandbox check": Step(FAST, lambda r, d: "probes held" in r.stdout and "FAILED" not in r.stdout),
    "opencwm data code --out runs/code --holdout path/to/cruxeval.jsonl --max-files 3000":
        Step(SLOW, lambda r, d: _json(r.stdout)["written"] > 1000),
    "opencwm data programs --out runs/programs --count 2000 --difficulty 2":
        Step(FAST, lambda r, d: _json(r.stdout)["programs"] == 2000),
    "opencwm trace collect runs/programs --out runs/program-traces":
        Step(SLOW, lambda r, d: _json(r.stdout)["traces"] == 2000),
    "opencwm train --stage pretrain --preset tiny --out runs/pt --data code=runs/code:0.5 --data "
    "traces=runs/program-traces:0.5 --steps 40 --batch-size 4 --seq-len 512 --warmup 10":
        Step(SLOW, lambda r, d: (d / "runs/pt/checkpoints/step-000040/model/config.json").exists()),
    "opencwm train --stage midtrain --init runs/pt/checkpoints/step-000040/model --tokenizer runs/pt/tokenizer "
    "--out runs/mid --data traces=runs/program-traces --steps 30 --batch-size 4 --seq-len 512 --warmup 10":
        Step(SLOW, lambda r, d: _json(r.stdout)["step"] == 30),
    "opencwm train --stage sft --init runs/mid/checkpoints/step-000030/model --tokenizer runs/pt/tokenizer "
    "--out runs/sft --data sft=runs/program-traces --steps 20 --batch-size 4 --seq-len 512 --warmup 5":
        Step(SLOW, lambda r, d: _json(r.stdout)["stage"] == "sft"),
    "torchrun --standalone --nproc_per_node=2 -m opencwm.cli train --preset tiny --out runs/dp --data "
    "traces=runs/program-traces --tokenizer runs/pt/tokenizer --steps 10 --batch-size 2 --seq-len 512 --warmup 2":
        Step(SLOW, lambda r, d: _json(r.stdout)["step"] == 10),
    "opencwm train --preset tiny --optimizer muon --muon-lr 0.02 --out runs/muon --data traces=runs/program-traces "
    "--tokenizer runs/pt/tokenizer --steps 20 --batch-size 4 --seq-len 512 --warmup 5":
        Step(SLOW, lambda r, d: _json(r.stdout)["step"] == 20),
    "opencwm eval trace --model runs/sft/checkpoints/step-000020/model --traces runs/traces --out runs/eval.json":
        Step(SLOW, lambda r, d: "| frame_exact_match" in r.stdout
             and json.loads((d / "runs/eval.json").read_text())["traces"] == 5),
    "opencwm eval cruxeval-o --model runs/sft/checkpoints/step-000020/model --data path/to/cruxeval.jsonl --style "
    "assert --samples 2 --out runs/evals/crux-o":
        Step(SLOW, lambda r, d: "cruxeval-o (assert)" in r.stdout and len(
            (d / "runs/evals/crux-o/results.jsonl").read_text().splitlines()) == 1),
    "opencwm eval humaneval --model runs/sft/checkpoints/step-000020/model --limit 3 --max-tokens 32 --out "
    "runs/evals/humaneval": Step(SLOW, lambda r, d: "humaneval (complete)" in r.stdout and "3 items" in r.stdout),
    "opencwm eval report runs/evals --out runs/evals/card":
        Step(SLOW, lambda r, d: "| crux-o |" in r.stdout and (d / "runs/evals/card/report.png").exists()),
    "opencwm rl items --programs 100 --out runs/rl-items.jsonl":
        Step(FAST, lambda r, d: r.stdout.startswith("runs/rl-items.jsonl: 100 items")),
    "opencwm rl train --init runs/sft/checkpoints/step-000020/model --env cruxeval-o:assert=runs/rl-items.jsonl "
    "--out runs/rl --steps 4 --prompts 4 --group 4 --max-tokens 16 --lr 1e-4":
        Step(SLOW, lambda r, d: r.stdout.startswith("runs/rl: step 4, reward")
             and (d / "runs/rl/checkpoints/step-000004/model/config.json").exists()),
    "opencwm rl show runs/rl --limit 2": Step(SLOW, lambda r, d: r.stdout.count("--- step") == 2),
    "opencwm speedrun --out runs/speedrun --cruxeval path/to/cruxeval.jsonl": Step(None, why=SPEEDRUN),
    "opencwm eval decontaminate cruxeval-o --data path/to/cruxeval.jsonl --corpus runs/traces":
        Step(FAST, lambda r, d: r.stdout.startswith("cruxeval-o: 0 of 1 items share a 13-gram with the 5 training")),
    "opencwm speedrun --out runs/long --midtrain-steps 5000 --train-programs 20000 --no-ablation --time-budget 0":
        Step(None, why=SPEEDRUN),
    "opencwm speedrun --out runs/gpu --device cuda --batch-size 32 --midtrain-steps 2000 --train-programs 16000":
        Step(None, why="not run: needs a GPU (benchmarks/gpu_checks.sh on a GPU machine)"),
    "opencwm trace collect .venv/lib/python3.11/site-packages/networkx --out runs/nx-traces --first-items 20":
        Step(SLOW, lambda r, d: _json(r.stdout)["traces"] > 100),
    "opencwm forage env toolz==1.0.0 --cache runs/envs --json":
        Step(SLOW, lambda r, d: _json(r.stdout)["passing"] > 100),
    "opencwm forage mutate toolz==1.0.0 --cache runs/envs --out runs/tasks --max 20 --json":
        Step(SLOW, lambda r, d: _json(r.stdout)["validated"] >= 3 and _json(r.stdout)["errors"] == 0),
    "opencwm forage run runs/tasks --policy oracle --out runs/traj-oracle --max 3":
        Step(SLOW, lambda r, d: r.stdout.strip().endswith("3 episodes, 3 solved")),
    "opencwm forage run runs/tasks --policy openai --base-url http://localhost:8000/v1 --model cwm --out runs/traj "
    "--max 3": Step(SLOW, lambda r, d: r.stdout.strip().endswith("3 episodes, 0 solved")),
    "opencwm forage env path/to/git-repo --commit v1.0 --cache runs/envs --json":
        Step(FAST, lambda r, d: _json(r.stdout)["passing"] == 5),
    "opencwm forage import path/to/instances.jsonl --repo path/to/git-repo --cache runs/envs --out runs/swe-tasks":
        Step(FAST, lambda r, d: "1 of 1 instances validated" in r.stdout),
    "opencwm forage grade path/to/predictions.jsonl --tasks runs/swe-tasks --out runs/swe-grade":
        Step(FAST, lambda r, d: "1 of 1 submitted instances resolved" in r.stdout
             and json.loads((d / "runs/swe-grade/report.json").read_text())["resolved_ids"] == ["toycalc__toycalc-1"]),
    "opencwm forage run runs/swe-tasks --policy oracle --out runs/swe-traj --sandbox docker":
        Step(SLOW, lambda r, d: r.stdout.strip().endswith("1 episodes, 1 solved")),
    "opencwm forage show runs/traj-oracle --limit 1": Step(SLOW, lambda r, d: "deciding tests: " in r.stdout),
    ".venv-vllm/bin/python -m vllm.entrypoints.openai.api_server --model runs/mid/checkpoints/step-000030/model "
    "--served-model-name cwm --dtype float32 --port 8000":
        Step(None, why="not run: a server that runs until stopped; tests/test_slow_vllm.py serves a checkpoint so"),
    "opencwm trace collect examples/debug_demo.py --out runs/demo-traces":
        Step(FAST, lambda r, d: _json(r.stdout)["traces"] == 4),
    "opencwm train --preset nano --sliding-window 512 --lr 0.006 --out runs/debug-demo --data traces=runs/demo-traces "
    "--data skipped_calls=runs/demo-traces --steps 600 --vocab 300 --seq-len 512 --batch-size 4":
        Step(SLOW, lambda r, d: (d / "runs/debug-demo/checkpoints/step-000600/model/config.json").exists()),
    'opencwm debug examples/debug_demo.py --call "f(3)" --model runs/debug-demo/checkpoints/step-000600/model '
    "--predict": Step(SLOW, lambda r, d: _json(r.stdout)["trace_exact"] and _json(r.stdout)["return_right"]),
    'opencwm generate --model runs/debug-demo/checkpoints/step-000600/model --prompt "def square(v):" --max-tokens 16':
        Step(SLOW, lambda r, d: len(r.stdout.strip()) > 0),
    "opencwm model info cwm-32b --quant int8 --context 131072 --gpu-gb 80":
        Step(FAST, lambda r, d: "fits in 80.0 GiB" in r.stdout and "NOT" not in r.stdout),
    "opencwm model info runs/sft/checkpoints/step-000020/model --json":
        Step(SLOW, lambda r, d: _json(r.stdout)["parameters"] > 1_000_000),
}


def _checkout_like(directory: Path) -> None:
    """A directory laid out like the checkout, holding the user's files the README names."""
    (directory / "examples").symlink_to(REPO / "examples")
    (directory / ".venv").symlink_to(REPO / ".venv")
    (directory / "prog.py").write_text("def f(x, ys=()):\n    total = x\n    for y in ys:\n        total += y\n"
                                       "    return total\n")
    (directory / "data.jsonl").write_text("".join(
        json.dumps({"id": f"sample_{i}", "code": "def f(x):\n    y = x * 2\n    return y", "input": str(i)}) + "\n"
        for i in range(5)))
    (directory / "path" / "to").mkdir(parents=True)
    shutil.copytree(REPO / "tests" / "data" / "toyrepo", directory / "path" / "to" / "repo")
    repo, old, new = make_release_repo(directory / "path" / "to" / "git-repo")
    gold = instance(repo, old, new)
    write_jsonl(directory / "path" / "to" / "instances.jsonl", [gold])
    write_jsonl(directory / "path" / "to" / "predictions.jsonl",
                [{"instance_id": gold["instance_id"], "model_name_or_path": "gold", "model_patch": gold["patch"]}])
    (directory / "path" / "to" / "cruxeval.jsonl").write_text(json.dumps(
        {"id": "sample_0", "code": "def f(text):\n    return text.upper()", "input": "'ab'", "output": "'AB'"}) + "\n")


def walkthrough(directory: Path, tiers: set[str], *, docker: bool = False) -> None:
    """Runs the README's commands of ``tiers`` in order in ``directory`` and checks each; the first that fails
    raises AssertionError. Commands with ``--sandbox docker`` run when ``docker`` (an engine answers)."""
    _checkout_like(directory)
    environment = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                   "OPENCWM_CACHE": str(directory / "cache")}
    for command in readme_commands((REPO / "README.md").read_text()):
        step = COMMANDS[name(command)]
        if step.tier not in tiers or ("--sandbox docker" in command and not docker):
            continue
        server = None
        if "localhost:8000" in command:
            server = ThreadingHTTPServer(("127.0.0.1", 8000), ScriptedChat)
            threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            result = subprocess.run(command, shell=True, cwd=directory, env=environment, capture_output=True,
                                    text=True, timeout=1500, executable="/bin/bash")
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()
        assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr, f"{command}\n{result.stderr[-3000:]}"
        assert step.check(result, directory), f"{command}\n{result.stdout[-3000:]}"
