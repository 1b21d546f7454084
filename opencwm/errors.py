"""The user-error type at the ground of opencwm: a problem with what the user asked for (a missing file, a bad
argument, a dataset of the wrong kind), which every command prints as one line and exits with status 2."""


class UsageError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""
