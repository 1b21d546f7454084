"""The user-error type at the ground of opencwm: a problem with what the user asked for (a missing file, a bad
argument, a dataset of the wrong kind), which every command prints as one line and exits with status 2; and
``one_line``, which makes any text (an error that quotes a program's output, a server's reply) fit for that line;
``terminal_text``, the same for text shown whole (a replayed episode). Also the two failures of a model backend
(``opencwm.infer``'s completers), here so that every area that drives a model (the forager's policies, the
evaluation) can tell them apart without importing inference."""


class UsageError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


class CompleterUnavailable(RuntimeError):
    """A model backend cannot answer at all: no server at the address, a checkpoint that does not load."""


class RequestRefused(CompleterUnavailable):
    """A model backend answers but refuses this request (a prompt longer than its context, an option it rejects)."""


def terminal_text(text: str) -> str:
    """``text`` fit for a terminal: line breaks and tabs kept, other control characters (escape sequences a hostile
    program or model could write) shown as ``?``."""
    return "".join(c if c.isprintable() or c in "\n\t" else "?" for c in text)


def one_line(text: str, limit: int | None = None) -> str:
    """``text`` as one line of a terminal: line breaks become spaces and other control characters (escape
    sequences a hostile program or server could send) ``?``; at most ``limit`` characters."""
    flat = terminal_text(text.replace("\r", "\n")).replace("\n", " ").replace("\t", " ")
    return flat if limit is None or len(flat) <= limit else flat[: limit - 3] + "..."
