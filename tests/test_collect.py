"""Trace collection: shards and manifest, resumption after a clean stop and after kill -9, hostile items, the
three kinds of source, Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from opencwm.sandbox import SandboxConfig
from opencwm.shards import read_manifest, shard_paths
from opencwm.trace.codec import encode
from opencwm.trace.collect import PRELOAD, CollectConfig, collect, read_traces
from opencwm.trace.program import trace_program

REPO = Path(__file__).resolve().parent.parent
OPENCWM = [sys.executable, "-m", "opencwm.cli"]


def _config(**kwargs) -> CollectConfig:
    sandbox = SandboxConfig(timeout=kwargs.pop("timeout", 10), memory_mb=1024, preload=PRELOAD)
    return CollectConfig(workers=2, sandbox=sandbox, progress=False, **kwargs)


def _write_items(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def _ids(out: Path) -> Counter:
    return Counter(row["id"] for row, _ in read_traces(out))


def test_jsonl_collection_matches_direct_tracing(tmp_path):
    source = REPO / "examples" / "programs.jsonl"
    summary = collect(source, tmp_path / "ds", _config(rows_per_shard=5))
    items = [json.loads(line) for line in source.read_text().splitlines()]
    assert summary["processed"] == summary["traces"] == len(items)
    manifest = read_manifest(tmp_path / "ds")
    assert manifest["rows"] == len(items) and len(manifest["shards"]) >= 2
    by_id = {row["id"]: trace for row, trace in read_traces(tmp_path / "ds")}
    for item in items:
        direct = trace_program(item["code"], f"f({item['input']})")
        assert encode(by_id[item["id"]]) == encode(direct)
    # Shards are plain Parquet that other tools read.
    table = pq.read_table(shard_paths(tmp_path / "ds")[0])
    assert {"id", "item", "source", "status", "frames"} <= set(table.column_names)


def test_rerun_skips_finished_items(tmp_path):
    source = REPO / "examples" / "programs.jsonl"
    first = collect(source, tmp_path / "ds", _config(max_items=5))
    assert first["processed"] == 5
    second = collect(source, tmp_path / "ds", _config())
    assert second["already_done"] == 5 and second["processed"] == second["items"] - 5
    assert set(_ids(tmp_path / "ds").values()) == {1}
    third = collect(source, tmp_path / "ds", _config())
    assert third["processed"] == 0


def test_first_items_selects_the_same_items_on_every_run(tmp_path):
    """``first_items`` is a fixed selection (the source's first N), so a rerun completes it and adds nothing
    more, unlike ``max_items`` (N more items per run)."""
    source = REPO / "examples" / "programs.jsonl"
    first_ids = [json.loads(line)["id"] for line in source.read_text().splitlines()][:4]
    assert collect(source, tmp_path / "ds", _config(first_items=4, max_items=3))["processed"] == 3
    assert collect(source, tmp_path / "ds", _config(first_items=4))["processed"] == 1
    assert collect(source, tmp_path / "ds", _config(first_items=4))["processed"] == 0
    assert sorted(_ids(tmp_path / "ds")) == sorted(first_ids)
    cli = [*OPENCWM, "trace", "collect", str(source), "--out", str(tmp_path / "cli"), "--quiet", "--first-items"]
    done = subprocess.run([*cli, "2"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(_ids(tmp_path / "cli")) == sorted(first_ids[:2])
    bad = subprocess.run([*cli, "0"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--first-items must be at least 1" in bad.stderr


def test_kill_9_loses_nothing_finished_and_duplicates_nothing(tmp_path):
    items = [{"id": f"slow-{i}", "code": "import time\ndef f(x):\n    time.sleep(0.02)\n    return x * 2",
              "input": str(i)} for i in range(400)]
    source = _write_items(tmp_path / "slow.jsonl", items)
    out = tmp_path / "ds"
    command = [*OPENCWM, "trace", "collect", str(source), "--out", str(out), "--workers", "2",
               "--rows-per-shard", "10", "--quiet"]
    process = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not ((out / "manifest.json").exists() and len(read_manifest(out)["shards"]) >= 3):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    partial = sum(_ids(out).values())
    assert 30 <= partial < len(items)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["already_done"] == partial
    ids = _ids(out)
    assert set(ids) == {i["id"] for i in items} and set(ids.values()) == {1}
    assert not list(out.glob(".*.tmp"))
    assert {p.name for p in out.glob("shard-*.parquet")} == {s["file"] for s in read_manifest(out)["shards"]}
    for row, trace in read_traces(out):
        assert trace.return_value == str(int(row["id"].split("-")[1]) * 2)


def test_hostile_items_are_contained_and_collection_goes_on(tmp_path):
    ok = {"code": "def f(x):\n    return x + 1", "input": "1"}
    items = [
        {"id": "ok-1", **ok},
        {"id": "loop", "code": "def f(x):\n    while True: pass", "input": "0"},  # one step, repeated forever
        {"id": "long", "code": "def f(x):\n    while True:\n        x += 1", "input": "0"},  # hits max_frames
        {"id": "memory", "code": "def f(x):\n    return bytearray(x * 1024**3)", "input": "10"},
        {"id": "segfault", "code": "import ctypes\ndef f(x):\n    return ctypes.string_at(x)", "input": "0"},
        {"id": "kill-parent", "code": "import os, signal\ndef f(x):\n    os.kill(os.getppid(), signal.SIGKILL)",
         "input": "0"},
        {"id": "exit", "code": "import os\ndef f(x):\n    os._exit(3)", "input": "0"},
        {"id": "syntax", "code": "def f(x:\n", "input": "0"},
        {"id": "raises", "code": "def f(x):\n    return 1 / x", "input": "0"},
        {"id": "ok-2", **ok},
    ]
    source = _write_items(tmp_path / "hostile.jsonl", items)
    collect(source, tmp_path / "ds", _config(timeout=2))
    status = {row["id"]: row["status"] for row, _ in read_traces(tmp_path / "ds")}
    assert status["ok-1"] == status["ok-2"] == "ok"
    assert status["loop"] == "timeout"
    assert status["long"] == "truncated"
    assert status["memory"] == "memory"
    assert status["segfault"] == "crash"
    assert status["kill-parent"] in ("killed", "timeout")
    assert status["exit"] == "crash"
    assert status["syntax"] == "error"
    assert status["raises"] == "exception"


def test_python_file_source_traces_its_trailing_calls(tmp_path):
    summary = collect(REPO / "examples" / "bank.py", tmp_path / "ds", _config())
    assert summary["traces"] == 2
    namespace: dict = {}
    exec((REPO / "examples" / "bank.py").read_text(), namespace)  # the real program, run plainly
    values = sorted(trace.return_value for _, trace in read_traces(tmp_path / "ds"))
    real = sorted([repr(namespace["main"](100, [25, -150, -60, 10])), repr(namespace["main"](0, [-1, 5]))])
    assert values == real


def _make_repository(root: Path) -> None:
    (root / "minilib").mkdir(parents=True)
    (root / "minilib" / "__init__.py").write_text("from minilib.text import slugify, word_counts\n")
    (root / "minilib" / "text.py").write_text(textwrap.dedent('''
        def _clean(word):
            return "".join(ch for ch in word.lower() if ch.isalnum())


        def slugify(title, sep="-"):
            words = [_clean(w) for w in title.split()]
            return sep.join(w for w in words if w)


        def word_counts(text):
            counts = {}
            for word in text.split():
                word = _clean(word)
                counts[word] = counts.get(word, 0) + 1
            return counts
    '''))
    (root / "tests").mkdir()
    (root / "tests" / "test_text.py").write_text(textwrap.dedent('''
        from minilib import slugify, word_counts


        def test_slugify():
            assert slugify("Hello, World!") == "hello-world"
            assert slugify("A  b", sep="_") == "a_b"


        def test_counts():
            assert word_counts("a b a") == {"a": 2, "b": 1}
    '''))


def test_repository_test_suite_becomes_traces_with_real_inputs(tmp_path):
    _make_repository(tmp_path / "repo")
    summary = collect(tmp_path / "repo", tmp_path / "ds", _config(timeout=60))
    assert summary["source_kind"] == "repository" and summary["statuses"] == {"ok": 3}
    sys.path.insert(0, str(tmp_path / "repo"))
    try:
        import minilib.text as real
    finally:
        sys.path.pop(0)
    for row, trace in read_traces(tmp_path / "ds"):
        assert row["module"] == "minilib/text.py"
        call = trace.frames[0]
        assert call.event == "call" and call.line.startswith(f"def {row['entry']}(")
        args = {k: eval(v) for k, v in call.locals.items()}
        assert trace.return_value == repr(getattr(real, row["entry"])(**args))
        # Helpers of the same module are stepped into.
        if row["entry"] == "word_counts":
            assert any(f.event == "call" and "def _clean" in f.line for f in trace.frames)


def test_ray_spreads_work_and_gives_the_same_traces(tmp_path):
    ray = pytest.importorskip("ray")
    source = REPO / "examples" / "programs.jsonl"
    try:
        summary = collect(source, tmp_path / "ray", _config(ray_address="local"))
    finally:
        ray.shutdown()
    collect(source, tmp_path / "local", _config())
    assert summary["traces"] == sum(1 for _ in source.open())
    ray_traces = {row["id"]: encode(t) for row, t in read_traces(tmp_path / "ray")}
    local_traces = {row["id"]: encode(t) for row, t in read_traces(tmp_path / "local")}
    assert ray_traces == local_traces


def test_another_interpreter_can_run_the_traced_code(tmp_path):
    from conftest import require_interpreter, run_python

    exe = require_interpreter("3.13")
    config = _config()
    config.sandbox.python = exe
    collect(REPO / "examples" / "programs.jsonl", tmp_path / "ds", config)
    rows = [row for row, _ in read_traces(tmp_path / "ds")]
    default = run_python(exe, "from opencwm.trace.tracer import default_backend; print(default_backend())").strip()
    assert default in ("native", "monitoring")  # 3.13's fastest: C where the Makefile built it, else sys.monitoring
    assert {r["python"][:4] for r in rows} == {"3.13"} and {r["backend"] for r in rows} == {default}
