"""Training documents from the corpora: every dataset kind becomes token sequences in the text form the model
learns (code as is; traces in CWM's trace format, with its special tokens; forager trajectories as CWM chat
conversations; each followed by end-of-text).

Traces the tracer could not finish (``error``, sandbox outcomes) are skipped; truncated traces are kept (their
text has no end-of-text, so the model never learns a fake ending).

A trace longer than the training sequence is split by the packer, and the rows after its first hold frames without
the source they execute: there the model cannot copy a line, it can only guess one typical of the corpus. The
``trace_windows`` view cuts each trace into windows of the training length instead, every window starting with the
trace's context (the source) and the frame before its first, both unlearned, so every frame is learned with its
source in view.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from opencwm.data.packing import Document
from opencwm.data.prompts import direct_prompt, direct_target, trajectory_text
from opencwm.shards import CODE_KIND, TRACES_KIND, TRAJECTORIES_KIND, DatasetError, read_manifest, read_rows
from opencwm.special_tokens import END_OF_TEXT, FRAME_SEP
from opencwm.tokenizer import Tokenizer
from opencwm.trace.codec import encode, encode_context, encode_frame
from opencwm.trace.record import Trace

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


def frame_windows(context: int, frames: list[int], window: int) -> list[tuple[int, int]]:
    """How a trace of ``context`` tokens then frames of the given token lengths is cut into windows of at most
    ``window`` tokens: ``(first, end)`` per window, the frames it learns (``first`` to ``end - 1``); every window
    but the first holds the context and frame ``first - 1`` before them. A window learns at least one frame (one
    longer than the window makes a longer window). Training (``trace_windows``) and the evaluation of a model trained
    on windows (``eval.trace_eval``) cut traces by this one rule. A context of more than half the window (a module
    of a repository) is not repeated: such a trace stays whole."""
    if 2 * context > window:
        return [(0, len(frames))]
    out, first, size = [], 0, context
    for index, length in enumerate(frames):
        if index > first and size + length > window:
            out.append((first, index))
            first, size = index, context + frames[index - 1]
        size += length
    out.append((first, len(frames)))
    return out


def trace_windows(trace, tokenizer: Tokenizer, window: int) -> list[Document]:
    """``trace``'s tokens (as ``encode`` writes them) in documents of at most ``window`` tokens where frames allow
    (``frame_windows``): the first is the trace's beginning; each later one repeats the context and the previous
    window's last frame, unlearned, then learns the frames that follow."""
    context = tokenizer.encode(encode_context(trace.source, trace.entry_lineno), allow_special=True)
    frames = [tokenizer.encode(encode_frame(frame) + FRAME_SEP, allow_special=True) for frame in trace.frames]
    if not trace.truncated:
        frames[-1] = frames[-1] + tokenizer.encode(END_OF_TEXT, allow_special=True)
    out = []
    for first, end in frame_windows(len(context), [len(frame) for frame in frames], window):
        shown = context + (frames[first - 1] if first else [])
        learned = [token for frame in frames[first:end] for token in frame]
        out.append(Document(shown + learned, [not first] * len(shown) + [True] * len(learned)))
    return out


def windowed_documents(directory: str | Path, tokenizer: Tokenizer, window: int) -> list[Document]:
    """The ``trace_windows`` view of a trace dataset (see the module's docstring)."""
    from opencwm.trace.collect import read_traces

    if read_manifest(directory).get("kind") != TRACES_KIND:
        raise DatasetError(f"{directory}: trace_windows reads a traces dataset")
    return [document for _, trace in read_traces(directory)
            if trace.status in TRAINABLE_TRACE_STATUSES and trace.frames
            for document in trace_windows(trace, tokenizer, window)]


def skipped_call_documents(directory: str | Path, tokenizer: Tokenizer) -> list[Document]:
    """The ``skipped_calls`` view of a trace dataset: each trace that makes nested calls, with their bodies left out
    (``trace.calls.without_call_bodies``): a call frame, then at once its return, as the neural debugger's ``next``
    asks the model to predict."""
    from opencwm.trace.calls import without_call_bodies
    from opencwm.trace.collect import read_traces

    if read_manifest(directory).get("kind") != TRACES_KIND:
        raise DatasetError(f"{directory}: skipped_calls reads a traces dataset")
    out = []
    for _, trace in read_traces(directory):
        if trace.status not in TRAINABLE_TRACE_STATUSES or not trace.frames:
            continue
        frames = without_call_bodies(trace.frames)
        if len(frames) < len(trace.frames):
            text = encode(Trace(trace.source, trace.entry_lineno, frames, trace.status))
            out.append(Document(tokenizer.encode(text, allow_special=True)))
    return out


COPY_DRILLS = 20_000  # documents of the copy_drills view (~1.4M tokens)


def copy_drills(alphabet: list[int], *, count: int = COPY_DRILLS, lengths: tuple[int, int] = (8, 64),
                copies: int = 2, seed: int = 0) -> list[Document]:
    """``count`` documents, each a stretch of ``lengths`` token ids drawn uniformly from ``alphabet``, written
    ``copies`` times (0: to 512 tokens; that variant grew no heads), the first copy unlearned. Nothing but looking
    back predicts the later copies, so training on them grows induction heads (a head that finds the earlier
    occurrence of the current token, and one that copies what followed it). On the 246 token ids of the speedrun's
    traces the tiny model goes from 12% to 85% copying between 500 and 600 steps of drills alone (Muon; AdamW had
    not started at 1000), and at ~225 with AdamW's parameters (embeddings, output head, norms) at ten times the rate,
    as the speedrun trains them; the corpus never grows them within a CPU budget, nor do drills mixed half and half
    with it (``benchmarks/induction_probe.py``, ``benchmarks/recipe_variants_drill_lr.json``, RESULTS.md)."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(count):
        stretch = [rng.choice(alphabet) for _ in range(rng.randint(*lengths))]
        times = copies or max(2, 512 // len(stretch))
        out.append(Document(stretch * times, [False] * len(stretch) + [True] * len(stretch) * (times - 1)))
    return out


def text_drills(token_lists: list[list[int]], *, count: int = COPY_DRILLS, lengths: tuple[int, int] = (8, 128),
                seed: int = 0) -> list[Document]:
    """``count`` documents, each a stretch of ``lengths`` consecutive tokens of one of ``token_lists`` (real code or
    trace text) written twice, the first copy unlearned. Random drills grow heads that match one token back, which
    is enough where every token is rare; in code a token such as ``,`` or ``'`` occurs everywhere, and only a
    longer prefix finds the place to copy from: copying real text asks for that."""
    import random

    rng = random.Random(seed)
    pool = [tokens for tokens in token_lists if len(tokens) >= lengths[0]]
    out = []
    for _ in range(count if pool else 0):
        tokens = rng.choice(pool)
        size = rng.randint(lengths[0], min(lengths[1], len(tokens)))
        start = rng.randrange(len(tokens) - size + 1)
        stretch = tokens[start : start + size]
        out.append(Document(stretch * 2, [False] * size + [True] * size))
    return out


def token_alphabet(tokenizer: Tokenizer, texts) -> list[int]:
    """The token ids ``texts`` use, special tokens aside: what copy drills and in-distribution copying
    (``opencwm.eval.copying``) draw from. (A uniform draw from the whole vocabulary asks a model trained on traces to
    copy ids it has never seen: the speedrun's traces use 246 of its 2,048.)"""
    special = set(tokenizer.special_ids.values())
    return sorted({i for text in texts for i in tokenizer.encode(text, allow_special=True)} - special)


def copy_drill_documents(directory: str | Path, tokenizer: Tokenizer) -> list[Document]:
    """The ``copy_drills`` view of a dataset: ``copy_drills`` over the token ids its texts use (special tokens
    aside), so the heads form on the ids the model will copy."""
    alphabet = token_alphabet(tokenizer, texts(directory))
    if not alphabet:
        raise DatasetError(f"{directory}: no tokens to draw copy drills from")
    return copy_drills(alphabet)


def text_drill_documents(directory: str | Path, tokenizer: Tokenizer) -> list[Document]:
    """The ``text_drills`` view of a dataset: ``text_drills`` over its tokenized texts."""
    drills = text_drills([document.tokens for document in documents(directory, tokenizer)])
    if not drills:
        raise DatasetError(f"{directory}: no text to draw copy drills from")
    return drills


def documents(directory: str | Path, tokenizer: Tokenizer, limit: int | None = None, *,
              direct: bool = False) -> list[Document]:
    """Tokenized training documents of a dataset; ``direct=True`` gives a trace dataset's direct-answer view."""
    source = direct_texts(directory, limit) if direct else texts(directory, limit)
    return [Document(tokenizer.encode(text, allow_special=True)) for text in source]


def is_windowed(name: str) -> bool:
    """Whether the source ``name`` reads traces in training-length windows (``trace_windows``,
    ``repo_trace_windows``: a name ending in ``windows``); a model trained on such a source reads traces the same
    way in evaluation."""
    return name.endswith("windows")


def source_documents(name: str, directory: str | Path, tokenizer: Tokenizer, *, window: int = 512) -> list[Document]:
    """The training documents of the source ``name`` reading ``directory``. The name picks a view of a trace
    dataset: ``direct`` (its direct answers: the source, ``assert CALL ==`` and the value), ``sft`` (chat examples,
    with and without a ``<think>`` walk through the execution, alternating), ``sft_nothink`` (without the walk),
    ``skipped_calls`` (traces with nested calls' bodies left out, as the neural debugger's ``next`` reads them),
    ``copy_drills`` (random stretches of the dataset's token ids, written twice: a copy warm-up),
    ``text_drills`` (stretches of the dataset's own text, written twice: copying where one token back is ambiguous),
    a name ending in ``windows`` (``trace_windows``, ``repo_trace_windows``: its traces in windows of ``window``
    tokens, the training length, each starting with the source); any other name trains on the text as written
    (code, traces or trajectories). The speedrun's mixtures use the same
    names, so one ``opencwm train --data NAME=DIR:WEIGHT`` per source reproduces any of its stages."""
    if name == "direct":
        return documents(directory, tokenizer, direct=True)
    if name in ("sft", "sft_nothink"):
        from opencwm.data.sft import sft_documents

        return sft_documents(directory, tokenizer, think="both" if name == "sft" else "no")
    if name == "skipped_calls":
        return skipped_call_documents(directory, tokenizer)
    if name == "copy_drills":
        return copy_drill_documents(directory, tokenizer)
    if name == "text_drills":
        return text_drill_documents(directory, tokenizer)
    if is_windowed(name):
        return windowed_documents(directory, tokenizer, window)
    return documents(directory, tokenizer)

