"""Tiny jobs used by the tests and by ``opencwm sandbox check``: run a snippet, echo a value."""


def run_code(code: str) -> str:
    namespace: dict = {}
    exec(compile(code, "<sandboxed>", "exec"), namespace)
    return "done"


def echo(value):
    return value
