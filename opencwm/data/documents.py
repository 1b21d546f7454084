"""Training documents from the corpora: every dataset kind becomes token sequences in the text form the model
learns (code as is; traces in CWM's trace format, with its special tokens; forager trajectories as CWM chat
conversations; each followed by end-of-text).

Traces the tracer could not finish (``error``, sandbox outcomes) are skipped; truncated traces are kept (their
text has no end-of-text, so the model never learns a fake ending).
"""

from __future__ import annotations

from pathlib import Path

from opencwm.data.packing import Document
from opencwm.shards import DatasetError, read_manifest, read_rows
from opencwm.special_tokens import END_OF_TEXT
from opencwm.tokenizer import Tokenizer
from opencwm.trace.codec import encode

TRAINABLE_TRACE_STATUSES = ("ok", "exception", "truncated")


def texts(directory: str | Path, limit: int | None = None) -> list[str]:
    """The training texts of a dataset directory (code, traces or agent trajectories)."""
    kind = read_manifest(directory).get("kind")
    out: list[str] = []
    if kind == "opencwm.code":
        for row in read_rows(directory, columns=["text"]):
            out.append(row["text"] + END_OF_TEXT)
            if limit and len(out) >= limit:
                break
    elif kind == "opencwm.traces":
        from opencwm.trace.collect import read_traces

        for _, trace in read_traces(directory):
            if trace.status in TRAINABLE_TRACE_STATUSES and trace.frames:
                out.append(encode(trace))
                if limit and len(out) >= limit:
                    break
    elif kind == "opencwm.forage.trajectories":
        from opencwm.forage.trajectory import read_trajectories, training_text

        out = [training_text(row) for row in read_trajectories(directory)[: limit or None]]
    else:
        raise DatasetError(f"{directory}: cannot train on a {kind!r} dataset (code, traces or trajectories)")
    return out


def direct_texts(directory: str | Path, limit: int | None = None) -> list[str]:
    """Output-prediction examples from a trace dataset: the source, ``assert CALL == `` and the real value (the
    CruxEval-O style answer that ``opencwm.eval`` scores), one document per program that returned."""
    from opencwm.eval.trace_eval import direct_prompt, direct_target
    from opencwm.trace.collect import read_traces

    out = []
    for row, trace in read_traces(directory):
        if trace.status == "ok" and row.get("call") and trace.return_value is not None:
            out.append(direct_prompt(trace.source, row["call"]) + direct_target(trace.return_value) + END_OF_TEXT)
            if limit and len(out) >= limit:
                break
    return out


def documents(directory: str | Path, tokenizer: Tokenizer, limit: int | None = None, *,
              direct: bool = False) -> list[Document]:
    """Tokenized training documents of a dataset; ``direct=True`` gives a trace dataset's direct-answer view."""
    source = direct_texts(directory, limit) if direct else texts(directory, limit)
    return [Document(tokenizer.encode(text, allow_special=True)) for text in source]
