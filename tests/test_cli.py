"""The opencwm command as a user runs it: output formats, one-line errors, non-zero exits, fast start-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def opencwm(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "opencwm.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def program(tmp_path) -> Path:
    path = tmp_path / "prog.py"
    path.write_text("def helper(v):\n    return v * 2\n\ndef f(a, b):\n    c = helper(a) + b\n    return c\n")
    return path


def test_run_json_format_matches_the_cwm_text(program):
    result = opencwm("trace", "run", str(program), "--call", "f(1, 2)", "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "ok"
    assert [f["event"] for f in data["frames"]] == ["call", "line", "call", "line", "return", "line", "return"]
    assert data["frames"][0]["locals"] == {"a": "1", "b": "2"} and data["frames"][-1]["value"] == "4"
    assert set(data["frames"][0]) == {"event", "line", "lineno", "locals", "value"}
    cwm = opencwm("trace", "run", str(program), "--call", "f(1, 2)", "--format", "cwm").stdout
    for frame in data["frames"]:  # locals and values appear in the CWM text exactly as in the JSON
        if frame["locals"] is not None:
            assert json.dumps(frame["locals"]) in cwm
        else:
            assert "<|arg_sep|>" + json.dumps(frame["value"]) in cwm


def test_run_pretty_in_and_out_of_the_sandbox(program):
    sandboxed = opencwm("trace", "run", str(program), "--call", "f(3, 4)")
    direct = opencwm("trace", "run", str(program), "--call", "f(3, 4)", "--no-sandbox")
    assert sandboxed.returncode == direct.returncode == 0
    assert sandboxed.stdout == direct.stdout and "-> 10" in sandboxed.stdout


def test_run_uses_the_files_trailing_call():
    result = opencwm("trace", "run", "examples/bank.py", "--format", "json")
    assert json.loads(result.stdout)["frames"][-1]["value"] == "{'balance': 75, 'rejected': [-150]}"


@pytest.mark.parametrize(("content", "call", "message"), [
    ("def f(:\n", "f()", "syntax error"),
    ("def f():\n    return 1\n", "g()", "NameError"),
    ("def f():\n    return 1\n", "f(", "bad call expression"),
    ("def f():\n    return 1\n", None, "no call to trace"),
])
def test_run_errors_are_one_line_with_nonzero_exit(tmp_path, content, call, message):
    path = tmp_path / "bad.py"
    path.write_text(content)
    args = ["trace", "run", str(path)] + (["--call", call] if call else [])
    result = opencwm(*args)
    assert result.returncode != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("opencwm: ") and message in lines[0]


def test_unreadable_and_missing_inputs(tmp_path):
    missing = opencwm("trace", "run", str(tmp_path / "nope.py"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    binary = tmp_path / "bin.py"
    binary.write_bytes(b"\xff\xfe\x00")
    result = opencwm("trace", "run", str(binary))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"code": "def f(x): return x", "input": "1", "id": "a"}\n{oops\n')
    result = opencwm("trace", "collect", str(bad_jsonl), "--out", str(tmp_path / "o"), "--quiet")
    # a bad line is a row with its reason (the good items are kept), and one line on stderr says so
    assert result.returncode == 0 and json.loads(result.stdout)["statuses"] == {"ok": 1, "error": 1}
    assert result.stderr.count("\n") == 1 and "bad.jsonl:2: not valid JSON" in result.stderr
    result = opencwm("trace", "show", str(tmp_path))
    assert result.returncode == 2 and "not an opencwm dataset" in result.stderr
    result = opencwm("trace", "collect", "examples/programs.jsonl", "--out", str(tmp_path / "o2"), "--workers", "0")
    assert result.returncode == 2 and "--workers" in result.stderr


def test_collect_then_show(tmp_path):
    out = tmp_path / "ds"
    result = opencwm("trace", "collect", "examples/programs.jsonl", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["traces"] == summary["items"]
    shown = opencwm("trace", "show", str(out), "--id", "fib", "--format", "json")
    [line] = shown.stdout.splitlines()  # JSON Lines only: pipeable to jq
    fib = json.loads(line)
    assert fib["id"] == "fib" and fib["frames"][-1]["value"] == "55"  # fib(10), as Python computes it
    assert json.loads(opencwm("trace", "show", str(out), "--summary").stdout)["traces"] == summary["traces"]
    listed = opencwm("trace", "show", str(out), "--list", "--format", "json").stdout.splitlines()
    assert len(listed) == summary["traces"] and {json.loads(x)["id"] for x in listed} >= {"fib"}


def test_show_lists_filters_and_shows_error_rows(tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "a", "code": "def f(x):\\n    return x", "input": "1"}\n'
                     '{"id": "b", "code": "def f(:", "input": "1"}\n')
    assert opencwm("trace", "collect", str(items), "--out", str(tmp_path / "o"), "--quiet").returncode == 0
    listed = opencwm("trace", "show", str(tmp_path / "o"), "--list").stdout.splitlines()
    assert sorted(line.split("\t")[:2] for line in listed) == [["a", "ok"], ["b", "error"]]  # in finishing order
    errors = opencwm("trace", "show", str(tmp_path / "o"), "--status", "error", "--format", "json")
    [row] = [json.loads(line) for line in errors.stdout.splitlines()]
    assert row["id"] == "b" and row["status"] == "error" and "syntax" in row["error"] and row["frames"] == []
    one = opencwm("trace", "show", str(tmp_path / "o"), "--id", "b")
    assert one.returncode == 0 and "=== b (" in one.stdout and "syntax" in one.stdout


@pytest.mark.parametrize("ending", [
    "print(f(3))", "result = f(3)", 'if __name__ == "__main__":\n    print(f(3))', "f(3)\nf(4)"])
def test_run_finds_the_call_at_the_end_of_a_file_and_says_which(tmp_path, ending):
    path = tmp_path / "p.py"
    path.write_text(f"def f(n):\n    return n * 2\n\n{ending}\n")
    result = opencwm("trace", "run", str(path), "--format", "json")
    data = json.loads(result.stdout)
    assert result.returncode == 0 and data["call"] == "f(3)" and data["frames"][-1]["value"] == "6"
    pretty = opencwm("trace", "run", str(path)).stdout.splitlines()[0]
    assert pretty.startswith("trace of f(3)") and ("first of the 2 calls" in pretty) == ending.endswith("f(4)")


def test_output_piped_into_a_closed_reader_is_not_an_error(tmp_path):
    path = tmp_path / "loop.py"  # a trace far longer than a pipe's buffer
    path.write_text("def f(n):\n    t = 0\n    for i in range(n):\n        t += i\n    return t\n\nf(3000)\n")
    result = subprocess.run(f"{sys.executable} -m opencwm.cli trace run {path} --no-sandbox | head -c 1",
                            shell=True, capture_output=True, text=True, cwd=REPO)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_tracing_commands_never_import_torch(program):
    code = ("import sys; from opencwm.cli import main; "
            f"main(['trace', 'run', {str(program)!r}, '--call', 'f(1, 2)', '--no-sandbox']); "
            "assert 'torch' not in sys.modules and 'pyarrow' not in sys.modules, 'heavy import'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_help_lists_every_command():
    result = opencwm("trace", "--help")
    assert result.returncode == 0
    for command in ("run", "collect", "show"):
        assert command in result.stdout
    # (opencwm sandbox check: tests/test_hostile.py)


def test_text_from_programs_and_servers_is_kept_to_one_terminal_line():
    """Error lines quote what a program or a server wrote: no line break or escape sequence reaches the terminal."""
    from opencwm.errors import one_line, terminal_text

    hostile = "boom\x1b[2J\x1b]0;title\x07\r\nsecond line\ttab"
    shown = one_line(hostile, 30)
    assert "\x1b" not in shown and "\n" not in shown and "\r" not in shown and "\x07" not in shown
    assert shown.startswith("boom?[2J?]0;title?") and len(shown) == 30 and shown.endswith("...")
    assert one_line("plain text") == "plain text"
    assert terminal_text(hostile) == "boom?[2J?]0;title??\nsecond line\ttab"
