"""Inference: one completion interface over a local checkpoint or an OpenAI-compatible server, the ``generate`` and
``chat`` commands, and the neural debugger, which steps through a program by asking the model for each frame.

- ``completer``: the ``Completer`` interface (token ids in, token ids out); ``load``: ``open_completer``;
- ``local``: an opencwm or Hugging Face CWM checkpoint on this machine, reusing the KV cache of the previous
  request's common prefix;
- ``remote``: any ``/v1/completions`` endpoint that takes and returns token ids (vLLM);
- ``debugger``: the debugging session (step, next, out, back, continue, set, reset) over a ``Completer``;
- ``compare``: predicted frames against the real tracer's, with the first divergence;
- ``repl`` and ``web``: the debugger's terminal and browser front ends.
"""
