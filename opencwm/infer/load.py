"""Opening a ``Completer``: a local checkpoint directory, or a served model with its tokenizer."""

from __future__ import annotations

from pathlib import Path

from opencwm.infer.completer import Completer, CompleterUnavailable
from opencwm.tokenizer import Tokenizer


def read_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer from a checkpoint directory or a tiktoken ``tokenizer.model`` file (CWM's release ships one)."""
    path = Path(path)
    try:
        if path.is_file():
            return Tokenizer.from_tiktoken(path)
        return Tokenizer.load(path)
    except (OSError, ValueError) as exc:
        raise CompleterUnavailable(f"{path}: cannot read a tokenizer ({exc})") from None


def open_completer(model: str, *, base_url: str | None = None, tokenizer: str | None = None, device: str = "cpu",
                   dtype: str | None = None, api_key: str = "EMPTY", timeout: float = 120.0,
                   retries: int = 2, batch_size: int = 8, concurrency: int = 8) -> Completer:
    """A local completer for the checkpoint directory ``model`` or, with ``base_url``, a remote one for the model
    the server calls ``model`` (its tokenizer: ``tokenizer``, else ``model`` when that is a local directory).
    ``complete_batch`` generates ``batch_size`` rows together locally, or keeps ``concurrency`` requests in flight."""
    if base_url:
        from opencwm.infer.remote import RemoteCompleter

        source = tokenizer or (model if Path(model).is_dir() else None)
        if source is None:
            raise CompleterUnavailable(f"--tokenizer is needed: {model!r} is a served model's name, not a local "
                                       "checkpoint directory to read its tokenizer from")
        return RemoteCompleter(base_url, model, read_tokenizer(source), api_key=api_key, timeout=timeout,
                               retries=retries, concurrency=concurrency)
    from opencwm.infer.local import LocalCompleter

    return LocalCompleter.from_checkpoint(model, tokenizer=tokenizer, device=device, dtype=dtype, batch_size=batch_size)
