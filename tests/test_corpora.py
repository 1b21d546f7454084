"""Corpora: the code corpus (dedup, licenses, resumable), the program corpus traced by trace collect, and the
CruxEval hold-out."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import CRUXEVAL

from opencwm.data.corpora import Holdout, build_code_corpus, build_program_corpus, cruxeval_overlap
from opencwm.data.synthetic import ProgramGenerator
from opencwm.shards import read_rows
from opencwm.trace.collect import CollectConfig, collect, read_traces


def test_code_corpus_is_deduplicated_licensed_and_resumable(tmp_path):
    summary = build_code_corpus(tmp_path / "code", include_site_packages=True, max_files=300)
    rows = list(read_rows(tmp_path / "code"))
    assert len(rows) == summary["written"] > 200
    assert len({r["id"] for r in rows}) == len(rows)  # one row per distinct content
    assert all(r["license"] and r["package"] for r in rows)
    assert {r["license"] for r in rows if r["package"] == "python-stdlib"} == {"PSF-2.0"}
    again = build_code_corpus(tmp_path / "code", include_site_packages=True, max_files=300)
    assert again["written"] == 0 and len(list(read_rows(tmp_path / "code"))) == len(rows)
    # every file looked at is counted once: written or dropped for one reason
    reasons = ("written", "duplicates", "held_out", "too_large", "empty", "unreadable", "resumed")
    assert summary["files"] == 300 == sum(summary[k] for k in reasons) and summary["empty"] > 0
    assert again["resumed"] == 300 == again["files"]


def test_a_program_corpus_resumes_its_own_configuration_only(tmp_path):
    import pytest

    from opencwm.shards import DatasetError

    build_program_corpus(tmp_path / "p", 20, difficulty=1, seed=3)
    build_program_corpus(tmp_path / "p", 20, difficulty=1, seed=3)  # the same: resumed, nothing added
    assert len(list(read_rows(tmp_path / "p"))) == 20
    with pytest.raises(DatasetError, match=r"another configuration \(seed 3 -> 4\)"):
        build_program_corpus(tmp_path / "p", 20, difficulty=1, seed=4)
    assert len(list(read_rows(tmp_path / "p"))) == 20
    build_program_corpus(tmp_path / "p", 10, difficulty=1, seed=4, force=True)
    rows = list(read_rows(tmp_path / "p"))
    assert len(rows) == 10 and all(r["id"].startswith("program-4-") for r in rows)


def test_holdout_finds_and_removes_contaminated_files(tmp_path):
    secret = {"id": "held-1", "code": "def f(text):\n    parts = text.split('-')\n    return parts[::-1]"}
    holdout = Holdout([secret])
    assert holdout.matches("x = 1\ndef g(text):\n        parts = text.split('-')\n        return parts[::-1]\n")
    assert not holdout.matches("def g(text):\n    return text")
    assert cruxeval_overlap(["no"], [secret]) == set()


def test_cruxeval_is_held_out_of_the_program_corpus(tmp_path):
    if not CRUXEVAL.exists():
        import pytest

        pytest.skip("CruxEval file absent")
    cruxeval = [json.loads(line) for line in CRUXEVAL.read_text().splitlines()]
    generator = ProgramGenerator(seed=0, difficulty=2)
    assert cruxeval_overlap((generator.program().source for _ in range(500)), cruxeval) == set()
    summary = build_code_corpus(tmp_path / "code", include_site_packages=False, max_files=400,
                                holdout=Holdout(cruxeval))
    assert cruxeval_overlap((r["text"] for r in read_rows(tmp_path / "code")), cruxeval) == set()
    assert summary["written"] > 300
    # the speedrun's repository-level traces show networkx's module files as their sources
    from opencwm.speedrun import SpeedrunConfig, _package_dir

    package = _package_dir(SpeedrunConfig().repo_package)
    assert cruxeval_overlap((p.read_text() for p in package.rglob("*.py")), cruxeval) == set()


def test_program_corpus_becomes_a_trace_corpus(tmp_path):
    build_program_corpus(tmp_path / "programs", 40, difficulty=1, seed=3)
    programs = {r["id"]: r for r in read_rows(tmp_path / "programs")}
    collect(tmp_path / "programs", tmp_path / "traces", CollectConfig(workers=2, progress=False))
    traces = {row["id"]: trace for row, trace in read_traces(tmp_path / "traces")}
    assert set(traces) == set(programs)
    for key, trace in list(traces.items())[:10]:
        namespace: dict = {}
        exec(programs[key]["source"], namespace)
        assert trace.return_value == repr(eval(programs[key]["call"], namespace))


def test_a_hard_share_of_programs_is_one_level_up_and_runs(tmp_path):
    build_program_corpus(tmp_path / "mixed", 300, difficulty=1, seed=4, hard_share=0.3)
    rows = list(read_rows(tmp_path / "mixed"))
    share = sum(r["difficulty"] == 2 for r in rows) / len(rows)
    assert {r["difficulty"] for r in rows} == {1, 2} and 0.22 < share < 0.38
    for row in [r for r in rows if r["difficulty"] == 2][:20]:  # the harder ones run under the real interpreter
        namespace: dict = {}
        exec(row["source"], namespace)
        eval(row["call"], namespace)  # below difficulty 3 every exception is caught
    again = tmp_path / "again"
    build_program_corpus(again, 300, difficulty=1, seed=4, hard_share=0.3)
    assert [r["source"] for r in read_rows(again)] == [r["source"] for r in rows]


def test_data_cli(tmp_path):
    out = subprocess.run([sys.executable, "-m", "opencwm.cli", "data", "programs", "--out", str(tmp_path / "p"),
                          "--count", "5"], capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)["programs"] == 5
    bad = subprocess.run([sys.executable, "-m", "opencwm.cli", "data", "programs", "--out", str(tmp_path / "q"),
                          "--difficulty", "9"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--difficulty" in bad.stderr
