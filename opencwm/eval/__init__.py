"""Evaluation: CWM's benchmarks over any completer, graded in the sandbox, and world modeling on traces.

- ``harness``: the one loop (prompts, batched or concurrent completion, answers, a sandbox pool of graders,
  per-item rows, resume, summary); ``passk``: pass@k and intervals; ``sources``: local files and the hub;
  ``grade_jobs``: what graders run inside the sandbox; ``report``: the report card; ``decontaminate``.
- A module per benchmark: ``cruxeval`` (CruxEval-O/-I), ``humaneval``, ``livecodebench``, ``mathematics``
  (Math-500, AIME), ``swe`` (agentic episodes on forager tasks, test-time scaling).
- World modeling: ``trace_eval`` (next frame, rollout, output prediction), ``copying`` (random-token copying) and
  ``curve`` (learning-curve points during training).
"""
