"""LiveCodeBench code generation (Jain et al., 2024): competitive-programming problems from LeetCode, AtCoder and
Codeforces, dated, so that a model is scored on problems published after its training data (``since`` / ``until``
select by contest date).

Items are in the public dataset's schema (``livecodebench/code_generation_lite``): ``question_content``,
``starter_code``, ``contest_date``, ``public_test_cases`` (a JSON list of ``{"input", "output", "testtype"}``),
``private_test_cases`` (the same, compressed: base64 of zlib of a pickled JSON string) and ``metadata`` (JSON with
``func_name`` for LeetCode's functional tests). The pickle is read by an unpickler that builds nothing but plain
data (a dataset file is untrusted: a pickle could otherwise run code on the host). The model answers in CWM's
reasoning mode with one fenced Python block; the program must pass every public and hidden test, each with its own
time limit (6 s by default), in the sandbox.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import zlib

from opencwm.chat import REASONING_SYSTEM_PROMPT, THINK_END, encode_messages
from opencwm.errors import UsageError
from opencwm.eval.harness import Benchmark, Problem, Verdict
from opencwm.eval.humaneval import last_code_block
from opencwm.eval.sources import HubDataset, MissingDataset, load_rows
from opencwm.sandbox import Outcome
from opencwm.special_tokens import STOP_TOKENS

RUN_TESTS = "opencwm.eval.grade_jobs:run_tests"
HUB = HubDataset("livecodebench/code_generation_lite", split="test", name="release_v6")
STDIN_FORMAT = "Read the input from standard input and write the answer to standard output."
STARTER_FORMAT = "Use this starter code, completing the method:\n\n```python\n{starter}\n```"
QUESTION = """Solve the following programming problem in Python.

{question}

{format}

Reply with the complete program in one ```python block."""


def same_output(got: str, want: str) -> bool:
    """Standard-output comparison for competitive programming: line by line, surrounding whitespace ignored, and
    lines whose numbers agree as decimals count as equal ("1.50" and "1.5")."""
    from decimal import Decimal, InvalidOperation

    got_lines = [line.strip() for line in got.strip().splitlines()]
    want_lines = [line.strip() for line in want.strip().splitlines()]
    if len(got_lines) != len(want_lines):
        return False
    for mine, theirs in zip(got_lines, want_lines):
        if mine == theirs:
            continue
        a, b = mine.split(), theirs.split()
        try:
            if len(a) != len(b) or any(Decimal(x) != Decimal(y) for x, y in zip(a, b)):
                return False
        except InvalidOperation:
            return False
    return True


def same_result(got: str, want: str) -> bool:
    """A functional test's result (JSON the program's run produced, untrusted) against the expected JSON."""
    try:
        return json.loads(got) == json.loads(want)
    except (ValueError, RecursionError):
        return False


class _PlainData(pickle.Unpickler):
    """Unpickles strings, numbers, lists and dicts only: any class or function reference is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refused: the pickle refers to {module}.{name}")


def decode_tests(field: str | list) -> list[dict]:
    """A test-case field: a JSON list, or LiveCodeBench's compressed form of one."""
    if isinstance(field, list):
        return field
    try:
        return json.loads(field)
    except ValueError:
        pass
    try:
        text = _PlainData(io.BytesIO(zlib.decompress(base64.b64decode(field)))).load()
        tests = json.loads(text) if isinstance(text, str) else text
    except (ValueError, zlib.error, pickle.UnpicklingError, EOFError, TypeError) as exc:
        raise MissingDataset(f"livecodebench: a test-case field is neither JSON nor LiveCodeBench's compressed "
                             f"form ({type(exc).__name__}: {str(exc)[:100]})") from None
    if not isinstance(tests, list) or not all(isinstance(t, dict) and "input" in t and "output" in t for t in tests):
        raise MissingDataset("livecodebench: test cases must be a list of {input, output, testtype}")
    return tests


class LiveCodeBench(Benchmark):
    name = "livecodebench"
    ks = (1,)

    def __init__(self, data: str | None = None, since: str | None = None, until: str | None = None,
                 test_timeout: float = 6.0, public_only: bool = False):
        self.data, self.since, self.until = data, since, until
        self.test_timeout, self.public_only = test_timeout, public_only
        self.stop_tokens = STOP_TOKENS
        self.reported = {"pass@1": 68.6}  # CWM on LiveCodeBench v5 (63.5 on v6)

    def settings(self) -> dict:
        return {**super().settings(), "style": "think", "since": self.since, "until": self.until,
                "test_timeout": self.test_timeout, "public_only": self.public_only}

    def problems(self) -> list[Problem]:
        try:
            rows = load_rows(self.data, HUB, self.name)
            problems = []
            for index, row in enumerate(rows):
                date = str(row.get("contest_date", ""))[:10]
                if (self.since and date < self.since) or (self.until and date > self.until):
                    continue
                tests = decode_tests(row["public_test_cases"])
                if not self.public_only and row.get("private_test_cases"):
                    tests += decode_tests(row["private_test_cases"])
                metadata = row.get("metadata") or "{}"
                metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
                starter = row.get("starter_code") or ""
                fmt = STARTER_FORMAT.format(starter=starter.rstrip()) if starter.strip() else STDIN_FORMAT
                question = QUESTION.format(question=row["question_content"].strip(), format=fmt)
                prompt = encode_messages([{"role": "system", "content": REASONING_SYSTEM_PROMPT},
                                          {"role": "user", "content": question}], add_generation_prompt=True,
                                         think=True)
                ident = str(row.get("question_id", index))
                problems.append(Problem(ident, prompt, {"tests": tests, "func_name": metadata.get("func_name"),
                                                        "date": date, "text": row["question_content"]}))
        except KeyError as exc:
            raise UsageError(f"livecodebench: an item lacks {exc}") from None
        except (MissingDataset, ValueError) as exc:
            raise UsageError(str(exc)) from None
        return problems

    def job_timeout(self, problem: Problem) -> float:  # every test's limit, and a margin
        return self.test_timeout * len(problem.reference["tests"]) + 5.0

    def extract(self, problem: Problem, text: str) -> str | None:
        if THINK_END not in text:
            return None
        return last_code_block(text.split(THINK_END, 1)[1])

    def grade(self, problem: Problem, answer: str) -> tuple[str, dict] | Verdict:
        ref = problem.reference  # the inputs go into the sandbox; the expected outputs stay here
        inputs = [{"input": test["input"], "testtype": test.get("testtype", "stdin")} for test in ref["tests"]]
        return RUN_TESTS, {"program": answer, "tests": inputs, "func_name": ref["func_name"],
                           "test_timeout": self.test_timeout}

    def verdict(self, problem: Problem, answer: str, outcome: Outcome) -> Verdict:
        """Each output the run produced against its test's expected output, in order: the first that differs, or
        the test on which the run stopped, fails the answer."""
        result = outcome.result if outcome.ok else None
        if not isinstance(result, dict) or not isinstance(result.get("outputs"), list):
            return super().verdict(problem, answer, outcome)
        for index, (test, got) in enumerate(zip(problem.reference["tests"], result["outputs"])):
            same = same_result if test.get("testtype") == "functional" else same_output
            if not isinstance(got, str) or not same(got, test["output"]):
                return Verdict(False, f"wrong output (test {index + 1})")
        failure = str(result.get("failure") or "")[:300]
        if failure or len(result["outputs"]) < len(problem.reference["tests"]):
            return Verdict(False, failure or "too few outputs")
        return Verdict(True)
