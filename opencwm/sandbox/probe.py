"""Tiny jobs used by the tests and by ``opencwm sandbox check``: run a snippet (and return what it left in
``result``), echo a value."""


def run_code(code: str) -> str:
    namespace: dict = {}
    exec(compile(code, "<sandboxed>", "exec"), namespace)
    return "done"


def echo(value):
    return value


def evaluate(code: str):
    namespace: dict = {}
    exec(compile(code, "<sandboxed>", "exec"), namespace)
    return namespace.get("result")
