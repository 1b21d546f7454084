"""The neural debugger against the real tracer: a model trained in the set-up until it reproduces the demo
program's traces (``debug_demo_model``, ``make test-slow``) is stepped through with every command, in a
pseudo-terminal as a user types them, and every frame it shows must be the frame the real tracer records (for
``set`` on the call frame: the frames of the program run with the edited argument). ``make test`` runs the
debugger on an untrained model: malformed frames shown as such, bad input as one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DEBUG_DEMO, DEBUG_DEMO_CALLS

from opencwm.trace.codec import resolve_locals
from opencwm.trace.inputs import python_file_items
from opencwm.trace.program import trace_program

SOURCE = python_file_items(DEBUG_DEMO)[0].kwargs["source"]


def real(call: str):
    return trace_program(SOURCE, call)


def real_locals(call: str, index: int) -> dict:
    return resolve_locals(real(call).frames)[index]


def lineno(text: str) -> int:
    return next(n for n, line in enumerate(SOURCE.split("\n"), 1) if line.strip() == text)


def debug(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "opencwm.cli", "debug", str(DEBUG_DEMO), *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("call", DEBUG_DEMO_CALLS)
def test_predict_gives_the_real_trace(debug_demo_model, call):
    result = debug("--call", call, "--model", str(debug_demo_model), "--predict")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    truth = real(call)
    assert summary["frames_real"] == len(truth.frames)
    assert summary["frames_exact"] == summary["frames_predicted"] == len(truth.frames)
    assert summary["trace_exact"] and summary["first_divergence"] is None
    assert summary["real_return"] == truth.return_value and summary["return_right"]
    assert result.stdout.count("\n") == len(truth.frames) + 2  # header, a row per frame, the summary


@pytest.mark.slow
def test_sampled_arguments_are_run_for_real(debug_demo_model):
    """``--call f``: the model writes the entry call (its argument); the truth is f run with that argument."""
    result = debug("--call", "f", "--model", str(debug_demo_model), "--predict", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["call"] in {"f(x=1)", "f(x=2)", "f(x=3)", "f(x=4)"}
    assert summary["trace_exact"], summary


def test_an_untrained_model_gives_malformed_frames_not_a_crash(untrained_checkpoint):
    result = debug("--call", "f(2)", "--model", str(untrained_checkpoint), "--predict", "--max-tokens", "40")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["frames_exact"] == 1 and summary["first_divergence"]["step"] == 1  # the given call frame only
    assert "??" in result.stdout  # a frame that is not one, shown as such


def test_bad_input_gets_one_line(tmp_path, untrained_checkpoint):
    debug_demo_model = untrained_checkpoint
    cases = [
        (["--call", "g(1)", "--model", str(debug_demo_model)], "no function 'g'"),
        (["--call", "f(1, 2)", "--model", str(debug_demo_model)], "TypeError"),
        (["--call", "f(1)", "--model", str(tmp_path)], "not a checkpoint directory"),
        (["--call", "f(1)", "--model", "cwm", "--base-url", "http://127.0.0.1:9/v1", "--tokenizer",
          str(debug_demo_model), "--predict", "--timeout", "2"], "APIConnectionError"),
    ]
    for args, message in cases:
        result = debug(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.stderr


class Terminal:
    """``opencwm debug`` in a pseudo-terminal, as a user types commands."""

    def __init__(self, model: Path, call: str):
        pexpect = pytest.importorskip("pexpect")
        self.child = pexpect.spawn(sys.executable, ["-m", "opencwm.cli", "debug", str(DEBUG_DEMO), "--call", call,
                                                    "--model", str(model)], encoding="utf-8", timeout=120,
                                   dimensions=(50, 200))
        self.prompt()

    def prompt(self) -> str:
        self.child.expect_exact("(cwmdbg) ")
        return self.child.before

    def send(self, command: str) -> str:
        """The command's output (without the echoed command)."""
        self.child.sendline(command)
        return self.prompt().split("\n", 1)[1].replace("\r", "").strip()

    def close(self) -> None:
        self.child.sendline("quit")
        self.child.expect(__import__("pexpect").EOF)
        self.child.close()
        assert self.child.exitstatus == 0


def shows(output: str, frame, index: int) -> bool:
    """Whether the debugger's line for step ``index`` shows the real tracer's ``frame``: its event, line number
    and source line, and its value for a return."""
    shown = output.startswith(f"[{index}] {frame.event} ") and f"line {frame.lineno}: {frame.line.rstrip()}" in output
    return shown and (frame.value is None or output.split("   -> ")[-1].split(" (")[0] == frame.value)


def test_a_terminal_session_with_an_untrained_model(untrained_checkpoint):
    term = Terminal(untrained_checkpoint, "f(2)")
    try:
        assert term.send("print") == json.dumps(real_locals("f(2)", 0))  # the given call frame
        out = term.send("step")
        assert out.startswith("[1] ") and ("??" in out or "is not in the source" in out or "line" in out)
        assert shows(term.send("back"), real("f(2)").frames[0], 0)
        assert "at the first frame" in term.send("back")
        assert "usage: set NAME = VALUE" in term.send("set")
        assert "breakpoint at line" in term.send(f"break {lineno('total = 0')}")
        assert "not a line of code" in term.send("break 999")
    finally:
        term.close()


@pytest.mark.slow
def test_every_command_in_a_terminal_gives_the_real_frames(debug_demo_model):
    frames = real("f(3)").frames
    term = Terminal(debug_demo_model, "f(3)")
    try:
        assert shows(term.send("step"), frames[1], 1)  # y = square(x)
        assert shows(term.send("step"), frames[2], 2)  # into square
        out = term.send("out")  # square returns, then the line after the call
        assert shows(out, frames[5], 5), out
        assert json.loads(term.send("print")) == real_locals("f(3)", 5)
        assert term.send("print y") == real_locals("f(3)", 5)["y"]
        assert shows(term.send("back"), frames[4], 4)  # the return of square
        term.send("back")
        assert term.send("where").split("\n") == [f"def f(x):  (line {lineno('y = square(x)')})",
                                                   f"  def square(v):  (line {lineno('return v * v')})"]
        term.send("back")
        term.send("back")
        out = term.send("next")  # over square: its call, its return predicted at once, the next line
        assert shows(out, frames[5], 4), out
        assert json.loads(term.send("print")) == real_locals("f(3)", 5)
        target = lineno("return total")
        assert term.send(f"break {target}") == f"breakpoint at line {target}"
        out = term.send("continue")
        stop = next(i for i, f in enumerate(frames) if f.lineno == target and f.event == "line")
        assert f"line {target}:" in out and "return total" in out
        assert json.loads(term.send("print")) == real_locals("f(3)", stop)
        truth = term.send("truth")
        assert "real trace of f(3)" in truth and "no divergence so far" in truth, truth
        assert "->" in term.send("list")
        out = term.send("step")
        assert "-> 6" in out and "return" in out  # f returns total
        assert "ended the trace" in term.send("step")
        assert "the trace has ended" in term.send("next")
    finally:
        term.close()


@pytest.mark.slow
def test_set_continues_from_the_edited_state_as_the_real_program_would(debug_demo_model):
    """At the call frame, ``set x = 2`` turns f(3) into f(2): the frames that follow are f(2)'s real ones."""
    term = Terminal(debug_demo_model, "f(3)")
    try:
        out = term.send("set x = 2")
        assert out.startswith("[0] call") and '"x": "2"' in out and "(set)" in out
        frames = real("f(2)").frames
        for index in range(1, len(frames)):
            assert shows(term.send("step"), frames[index], index)
        assert "ended the trace" in term.send("step")
        truth = term.send("truth")
        assert "real trace of f(x=2)" in truth and "no divergence so far" in truth, truth
        assert shows(term.send("back"), frames[-1], len(frames) - 1)  # back from the end: the last frame again
        assert "only the locals of a call or line frame" in term.send("set y = 1")  # a return frame
        term.send("back")
        assert "no local 'nope'" in term.send("set nope = 1")
        assert "not a Python expression" in term.send("set x = (")
        assert "unknown command" in term.send("frobnicate")
        assert shows(term.send("reset"), real("f(3)").frames[0], 0)
        assert json.loads(term.send("print")) == real_locals("f(3)", 0)
    finally:
        term.close()


def test_the_skipped_calls_view_is_the_real_trace_without_the_helper_s_body(tmp_path, untrained_checkpoint):
    """What ``next`` is trained on: each real trace with ``square``'s body left out (its call, then its return)."""
    from opencwm.cli import main
    from opencwm.data.documents import source_documents
    from opencwm.tokenizer import Tokenizer
    from opencwm.trace.codec import decode

    assert main(["trace", "collect", str(DEBUG_DEMO), "--out", str(tmp_path / "traces")]) == 0
    tokenizer = Tokenizer.load(untrained_checkpoint)
    views = sorted((decode(tokenizer.decode(d.tokens)) for d in source_documents("skipped_calls", tmp_path / "traces",
                                                                                    tokenizer)),
                   key=lambda t: len(t.frames))
    body = lineno("return v * v")
    for call, view in zip(DEBUG_DEMO_CALLS, views):
        expected = [f for f in real(call).frames if not (f.event == "line" and f.lineno == body)]
        assert [(f.event, f.lineno, f.locals, f.value) for f in view.frames] == \
            [(f.event, f.lineno, f.locals, f.value) for f in expected]
        assert view.status == "ok"
