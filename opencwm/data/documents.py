"""Training documents from the corpora: every dataset kind becomes token sequences in the text form the model
learns (code as is; traces in CWM's trace format, with its special tokens; forager trajectories as CWM chat
conversations; each followed by end-of-text).

Traces the tracer could not finish (``error``, sandbox outcomes) are skipped; truncated traces are kept (their
text has no end-of-text, so the model never learns a fake ending).
"""

from __future__ import annotations

import itertools
from pathlib import Path

from opencwm.data.packing import Document
from opencwm.data.prompts import direct_prompt, direct_target, trajectory_text
from opencwm.shards import CODE_KIND, TRACES_KIND, TRAJECTORIES_KIND, DatasetError, read_manifest, read_rows
from opencwm.special_tokens import END_OF_TEXT
from opencwm.tokenizer import Tokenizer
from opencwm.trace.codec import encode

TRAINABLE_TRACE_STATUSES = ("ok", "exception", "truncated")


def texts(directory: str | Path, limit: int | None = None) -> list[str]:
    """The training texts of a dataset directory (code, traces or agent trajectories)."""
    kind = read_manifest(directory).get("kind")
    out: list[str] = []
    if kind == CODE_KIND:
        for row in read_rows(directory, columns=["text"]):
            out.append(row["text"] + END_OF_TEXT)
            if limit and len(out) >= limit:
                break
    elif kind == TRACES_KIND:
        from opencwm.trace.collect import read_traces

        for _, trace in read_traces(directory):
            if trace.status in TRAINABLE_TRACE_STATUSES and trace.frames:
                out.append(encode(trace))
                if limit and len(out) >= limit:
                    break
    elif kind == TRAJECTORIES_KIND:
        rows = itertools.islice(read_rows(directory, columns=["messages"]), limit or None)
        out = [trajectory_text(row) for row in rows]
    else:
        raise DatasetError(f"{directory}: cannot train on a {kind!r} dataset (code, traces or trajectories)")
    return out


def direct_texts(directory: str | Path, limit: int | None = None) -> list[str]:
    """Output-prediction examples from a trace dataset: the source, ``assert CALL == `` and the real value (the
    CruxEval-O style answer that ``opencwm.eval`` scores), one document per program that returned."""
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


def source_documents(name: str, directory: str | Path, tokenizer: Tokenizer) -> list[Document]:
    """The training documents of the source ``name`` reading ``directory``. The name picks a view of a trace
    dataset: ``direct`` (its direct answers: the source, ``assert CALL ==`` and the value), ``sft`` (chat examples,
    with and without a ``<think>`` walk through the execution, alternating), ``sft_nothink`` (without the walk); any
    other name trains on the text as written (code, traces or trajectories). The speedrun's mixtures use the same
    names, so one ``opencwm train --data NAME=DIR:WEIGHT`` per source reproduces any of its stages."""
    if name == "direct":
        return documents(directory, tokenizer, direct=True)
    if name in ("sft", "sft_nothink"):
        from opencwm.data.sft import sft_documents

        return sft_documents(directory, tokenizer, think="both" if name == "sft" else "no")
    return documents(directory, tokenizer)

