"""CruxEval (Gu et al., 2024): predict ``f(input)``'s output from ``f``'s source (CruxEval-O), or an input that
gives a stated output (CruxEval-I). Items come from a local file or the public dataset.

- ``CruxEval``, the benchmark for ``opencwm eval cruxeval-o|cruxeval-i``, by CruxEval's protocol: ``n`` samples
  (10 by default, at temperature 0.2), pass@1 and pass@5 by the unbiased estimator, an answer graded by running
  ``CODE\nassert OUTPUT == ANSWER`` in the sandbox with a 3 s limit (an output answer that calls ``f`` fails, and
  an input answer must be a call of ``f``), as CruxEval's evaluator does. Styles: ``direct`` (a few-shot prompt in
  CruxEval's ``[PYTHON]``/``[ANSWER]`` format, worded by opencwm; ``--prompt-file`` takes the official template),
  ``assert`` (the source, then ``assert f(INPUT) == `` to complete: what opencwm's trace-trained models learn),
  ``think`` (CWM's reasoning mode in its chat format) and ``rollout`` (CruxEval-O only: the model writes the
  call's trace from its source and entry frame; the answer is the value its return frame holds).
- ``cruxeval_scores``: the world-modeling evaluator's greedy direct and rollout figures (``opencwm eval trace``).
"""

from __future__ import annotations

from pathlib import Path

from opencwm.chat import REASONING_SYSTEM_PROMPT, THINK_END, encode_messages
from opencwm.data.prompts import direct_prompt, rollout_prompt
from opencwm.errors import UsageError
from opencwm.eval.harness import Benchmark, Problem, Verdict
from opencwm.eval.sources import HubDataset, MissingDataset, load_rows
from opencwm.eval.trace_eval import Score, TraceEvaluator, returned
from opencwm.special_tokens import END_OF_TEXT, STOP_TOKENS
from opencwm.trace.codec import TraceDecodeError, decode, encode
from opencwm.trace.record import Trace
from opencwm.trace.values import same_value

CRUXEVAL_HUB = HubDataset("cruxeval-org/cruxeval", split="test")
RUN_PROGRAM = "opencwm.eval.grade_jobs:run_program"
STYLES = ("direct", "assert", "think", "rollout")

# The few-shot prompts, in CruxEval's format ({code}, {input} / {output} filled in).
OUTPUT_PROMPT = """Below is a Python function and an assertion that calls it. Replace ?? with the value the call \
returns, written as a Python literal (no expressions, no calls), even where the function looks wrong. Give the \
completed assertion between [ANSWER] and [/ANSWER] and nothing else, as in the examples.

[PYTHON]
def f(a, b):
    return a * b
assert f(3, 4) == ??
[/PYTHON]
[ANSWER]
assert f(3, 4) == 12
[/ANSWER]

[PYTHON]
def f(text):
    return text.upper() + "!"
assert f("hey") == ??
[/PYTHON]
[ANSWER]
assert f("hey") == "HEY!"
[/ANSWER]

[PYTHON]
{code}
assert f({input}) == ??
[/PYTHON]
[ANSWER]
"""
INPUT_PROMPT = """Below is a Python function f and an assertion f(??) == output. Replace ?? with an input for \
which f returns that output (if several do, give one). Give the completed assertion between [ANSWER] and \
[/ANSWER] and nothing else, as in the examples.

[PYTHON]
def f(items):
    return sum(items) * 2
assert f(??) == 10
[/PYTHON]
[ANSWER]
assert f([2, 3]) == 10
[/ANSWER]

[PYTHON]
def f(word, times):
    return word * times
assert f(??) == "abab"
[/PYTHON]
[ANSWER]
assert f("ab", 2) == "abab"
[/ANSWER]

[PYTHON]
{code}
assert f(??) == {output}
[/PYTHON]
[ANSWER]
"""
THINK_OUTPUT = """What does this call of the Python function below return?

```python
{code}
```

Complete the assertion `assert f({input}) == ??` with the returned value as a Python literal, and write the \
completed assertion between [ANSWER] and [/ANSWER]."""
THINK_INPUT = """Find an input for which the Python function below returns the given output.

```python
{code}
```

Complete the assertion `assert f(??) == {output}`, and write the completed assertion between [ANSWER] and \
[/ANSWER]."""


def load_cruxeval(source: str) -> tuple[list[dict] | None, str | None]:
    """CruxEval items from a local file, or from the public Hugging Face dataset when ``source`` is "hf" and the
    network allows. Returns (items, None) or (None, why they are missing)."""
    try:
        return load_rows(source, CRUXEVAL_HUB, "cruxeval"), None
    except MissingDataset as exc:
        return None, str(exc)


def cruxeval_scores(evaluator: TraceEvaluator, items: list[dict]) -> dict:
    """CruxEval-O by direct answer and by trace rollout (the model traces ``f(input)`` from the source and the
    call frame holding the input; an item whose call cannot start counts as wrong). The real trace, made in the
    sandbox, only bounds how long a rollout may run (twice its length); the model sees its call frame alone."""
    direct = evaluator.direct([(item["code"], f"f({item['input']})", item["output"]) for item in items])
    rollout = Score()
    real = real_traces([(item["code"], f"f({item['input']})") for item in items])
    started = [trace for trace in real if trace is not None]
    contexts = [Trace(source=t.source, entry_lineno=t.entry_lineno, frames=t.frames[:1]) for t in started]
    truths = [encode(t)[len(rollout_prompt(t)):] for t in started]
    predictions = iter(evaluator.rollout_texts(contexts, truths))
    for item, trace in zip(items, real):
        rollout.add(trace is not None and same_value(returned(next(predictions)[1]), item["output"]))
    return {"cruxeval_o_direct": direct.rate, "cruxeval_o_rollout": rollout.rate, "cruxeval_items": direct.total}


def real_traces(programs: list[tuple[str, str]]) -> list[Trace | None]:
    """The real trace of each (source, call), made in the sandbox; None where the call cannot even start."""
    from opencwm.trace.sandboxed import sandboxed_traces

    return [trace if trace.frames else None for trace in sandboxed_traces(programs)]


def cruxeval_report(evaluator: TraceEvaluator, source: str | None, limit: int | None = None) -> dict:
    """CruxEval-O figures, or None for both with ``cruxeval_missing`` saying why they could not be measured."""
    items, why = load_cruxeval(source) if source else (None, "not requested")
    if items is None:
        return {"cruxeval_o_direct": None, "cruxeval_o_rollout": None, "cruxeval_missing": why}
    return cruxeval_scores(evaluator, items[:limit])


def answer_text(text: str) -> str:
    """What a completion puts between ``[ANSWER]`` and ``[/ANSWER]`` (all of it when there are no tags)."""
    if "[ANSWER]" in text:
        text = text.split("[ANSWER]")[1]
    return text.split("[/ANSWER]")[0].strip()


class CruxEval(Benchmark):
    ks = (1, 5)
    grade_timeout = 3.0

    def __init__(self, task: str = "output", style: str = "direct", data: str | None = None,
                 prompt_file: str | None = None):
        if task not in ("output", "input") or style not in STYLES:
            raise UsageError(f"CruxEval: task output|input and style {'|'.join(STYLES)} (got {task}, {style})")
        if task == "input" and style in ("rollout", "assert"):
            raise UsageError(f"cruxeval-i has no {style} style (it predicts outputs): use direct or think")
        self.task, self.style, self.data = task, style, data
        self.name = "cruxeval-o" if task == "output" else "cruxeval-i"
        self.reported = {"pass@1": 94.3} if task == "output" else {}
        self.template = Path(prompt_file).read_text() if prompt_file else None
        self.stop_tokens = (END_OF_TEXT,) if style == "rollout" else STOP_TOKENS
        self.stop_texts = ("[/ANSWER]",) if style == "direct" else ("\n",) if style == "assert" else ()

    def settings(self) -> dict:
        return {**super().settings(), "task": self.task, "style": self.style,
                "prompt": "custom" if self.template else "opencwm"}

    def problems(self) -> list[Problem]:
        try:
            items = load_rows(self.data, CRUXEVAL_HUB, self.name)
        except MissingDataset as exc:
            raise UsageError(str(exc)) from None
        for item in items:
            if not all(key in item for key in ("code", "input", "output")):
                raise UsageError(f"{self.name}: an item lacks code, input or output (fields: {', '.join(item)})")
        ids = [str(item.get("id", f"sample_{i}")) for i, item in enumerate(items)]
        if self.style == "rollout":
            return self._rollout_problems(ids, items)
        return [Problem(i, self._prompt(item), {"code": item["code"], "input": item["input"],
                                                "output": item["output"], "text": item["code"]})
                for i, item in zip(ids, items)]

    def _prompt(self, item: dict) -> str:
        fill = {"code": item["code"], "input": item["input"], "output": item["output"]}
        if self.style == "assert":
            return direct_prompt(item["code"], f"f({item['input']})")
        if self.style == "direct":
            template = self.template or (OUTPUT_PROMPT if self.task == "output" else INPUT_PROMPT)
            return template.format(**fill)
        question = (THINK_OUTPUT if self.task == "output" else THINK_INPUT).format(**fill)
        return encode_messages([{"role": "system", "content": REASONING_SYSTEM_PROMPT},
                                {"role": "user", "content": question}], add_generation_prompt=True, think=True)

    def _rollout_problems(self, ids: list[str], items: list[dict]) -> list[Problem]:
        """The model sees the source and the entry call frame of the real call (traced in the sandbox); an item
        without one (the call cannot start, or its tracing was killed) fails unasked."""
        traces = real_traces([(item["code"], f"f({item['input']})") for item in items])
        problems = []
        for i, item, trace in zip(ids, items, traces):
            reference = {"code": item["code"], "input": item["input"], "output": item["output"], "text": item["code"]}
            if trace is None:
                problems.append(Problem(i, "", reference, unanswerable="no real trace of the call to start from"))
                continue
            context = Trace(source=trace.source, entry_lineno=trace.entry_lineno, frames=trace.frames[:1])
            problems.append(Problem(i, rollout_prompt(context), reference))
        return problems

    def extract(self, problem: Problem, text: str) -> str | None:
        if self.style == "rollout":
            try:
                return returned(decode(problem.prompt + text))
            except TraceDecodeError:
                return None
        if self.style == "think":
            if THINK_END not in text:
                return None
            text = text.split(THINK_END, 1)[1]
        answer = answer_text(text) if self.style != "assert" else text.strip()
        if self.task == "output":
            return answer.split("==", 1)[1].strip() if "==" in answer else answer
        answer = answer.split("==", 1)[0].strip()
        return answer.split("assert", 1)[1].strip() if "assert" in answer else answer

    def grade(self, problem: Problem, answer: str) -> tuple[str, dict] | Verdict:
        ref = problem.reference
        if self.task == "output" and f"f({ref['input']})" in answer:
            return Verdict(False, "the answer calls f")
        if self.task == "input" and "f(" not in answer:
            return Verdict(False, "the answer is not a call of f")
        return RUN_PROGRAM, {"program": f"{ref['code']}\nassert {ref['output']} == {answer}"}
