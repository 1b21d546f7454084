"""Math-500 (Lightman et al., 2023) and AIME 2024/2025: competition problems answered in CWM's reasoning mode.

The prompt is the problem in the chat format with the reasoning system prompt, asking for the final answer in
``\\boxed{}`` (as CWM's math environments do); the answer is the content of the last ``\\boxed{}`` after the
reasoning (``</think>``), and it is right when ``math-verify`` finds it equal to the reference (fractions,
radicals, intervals, sets, units and LaTeX variants as mathematics, not as strings), inside the sandbox.
Defaults follow CWM's reasoning evaluations: temperature 1.0, top-p 0.95, several samples per problem averaged
(pass@1). Items: a local file in the public datasets' schema (``problem``, ``answer``) or the hub.
"""

from __future__ import annotations

from opencwm.chat import REASONING_SYSTEM_PROMPT, THINK_END, encode_messages
from opencwm.errors import UsageError
from opencwm.eval.harness import Benchmark, Problem, Verdict
from opencwm.eval.sources import HubDataset, MissingDataset, field, load_rows
from opencwm.special_tokens import STOP_TOKENS

MATH_EQUAL = "opencwm.eval.grade_jobs:math_equal"
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DATASETS = {
    "math500": (HubDataset("HuggingFaceH4/MATH-500", split="test"), {"pass@1": 96.6}),
    "aime24": (HubDataset("HuggingFaceH4/aime_2024", split="train"), {"pass@1": 76.0}),
    "aime25": (HubDataset("math-ai/aime25", split="test"), {"pass@1": 68.2}),
}


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced; None if none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start == -1:
        return None
    at = text.find("{", start)
    if at == -1:
        return None
    depth = 0
    for index in range(at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[at + 1 : index].strip()
    return None


class MathBenchmark(Benchmark):
    ks = (1,)
    grade_timeout = 20.0  # parsing and comparing with sympy: generous, and bounded
    sandbox_preload = ("math_verify",)

    def __init__(self, name: str, data: str | None = None):
        if name not in DATASETS:
            raise UsageError(f"math benchmarks: {', '.join(DATASETS)} (got {name})")
        self.name, self.data = name, data
        self.hub, self.reported = DATASETS[name]
        self.stop_tokens = STOP_TOKENS

    def settings(self) -> dict:
        return {**super().settings(), "style": "think"}

    def problems(self) -> list[Problem]:
        try:
            rows = load_rows(self.data, self.hub, self.name)
            problems = []
            for index, row in enumerate(rows):
                try:
                    ident = str(field(row, "unique_id", "id", "problem_idx"))
                except MissingDataset:
                    ident = f"{self.name}-{index}"
                problem, answer = str(field(row, "problem", "question")), str(field(row, "answer"))
                prompt = encode_messages([{"role": "system", "content": REASONING_SYSTEM_PROMPT},
                                          {"role": "user", "content": f"{problem}\n{INSTRUCTION}"}],
                                         add_generation_prompt=True, think=True)
                problems.append(Problem(ident, prompt, {"answer": answer, "text": problem}))
        except MissingDataset as exc:
            raise UsageError(str(exc)) from None
        return problems

    def extract(self, problem: Problem, text: str) -> str | None:
        if THINK_END not in text:
            return None
        return last_boxed(text.split(THINK_END, 1)[1])

    def grade(self, problem: Problem, answer: str) -> tuple[str, dict] | Verdict:
        return MATH_EQUAL, {"gold": problem.reference["answer"], "answer": answer}
