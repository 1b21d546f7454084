"""Fidelity on real code across CPython 3.11, 3.12 and 3.13 and every tracing backend.

Every CruxEval item must trace with status ok and return what the real interpreter returns (computed untraced
in a separate process of the same version), and every trace must be identical whatever the version and backend:
the tracer's rules (see opencwm/trace/source_map.py) remove the interpreters' differences, and the C backend
("native", built by the Makefile for every interpreter it finds) must give the pure-Python backends' bytes.
"""

from __future__ import annotations

import ast
import json
import textwrap

import pytest
from conftest import require_interpreter, run_python
from test_tracer import PROGRAMS

TRACE_ALL = """
import json, sys
from opencwm.trace.program import trace_program
from opencwm.trace.codec import encode
backend = sys.argv[1] if len(sys.argv) > 1 else None
for line in sys.stdin:
    item = json.loads(line)
    t = trace_program(item["code"], item["call"], backend=BACKEND)
    print(json.dumps({"id": item["id"], "status": t.status, "value": t.return_value, "text": encode(t)}))
"""

RUN_REAL = """
import json, sys
for line in sys.stdin:
    item = json.loads(line)
    ns = {"__name__": "__main__"}
    exec(item["code"], ns)
    print(json.dumps({"id": item["id"], "value": repr(eval(item["call"], ns))}))
"""

COMBINATIONS = [("3.11", "settrace"), ("3.11", "native"), ("3.12", "settrace"), ("3.12", "monitoring"),
                ("3.12", "native"), ("3.13", "settrace"), ("3.13", "monitoring"), ("3.13", "native")]


def _items(cruxeval):
    items = [{"id": c["id"], "code": c["code"], "call": f"f({c['input']})"} for c in cruxeval]
    items += [{"id": f"golden-{k}", "code": textwrap.dedent(src), "call": call} for k, (src, call) in PROGRAMS.items()]
    return items


def _trace_all(version: str, backend: str, items: list[dict]) -> dict[str, dict]:
    exe = require_interpreter(version)
    stdin = "".join(json.dumps(i) + "\n" for i in items)
    out = run_python(exe, TRACE_ALL.replace("BACKEND", repr(backend)), stdin)
    return {r["id"]: r for r in map(json.loads, out.splitlines())}


@pytest.fixture(scope="module")
def reference_traces(cruxeval):
    return _trace_all("3.11", "settrace", _items(cruxeval))


@pytest.mark.parametrize(("version", "backend"), COMBINATIONS)
def test_cruxeval_traces_return_the_real_value(cruxeval, reference_traces, version, backend):
    items = [i for i in _items(cruxeval) if not i["id"].startswith("golden-")]
    traces = reference_traces if (version, backend) == ("3.11", "settrace") else _trace_all(version, backend, items)
    exe = require_interpreter(version)
    real = {r["id"]: r["value"] for r in map(json.loads, run_python(
        exe, RUN_REAL, "".join(json.dumps(i) + "\n" for i in items)).splitlines())}
    expected = {c["id"]: c["output"] for c in cruxeval}
    ok = 0
    for item in items:
        trace = traces[item["id"]]
        assert trace["status"] == "ok", (item["id"], trace)
        value = ast.literal_eval(trace["value"])
        assert value == ast.literal_eval(real[item["id"]]), item["id"]
        assert value == ast.literal_eval(expected[item["id"]]), item["id"]
        ok += 1
    assert ok == len(cruxeval) == 800


@pytest.mark.parametrize(("version", "backend"), [c for c in COMBINATIONS if c != ("3.11", "settrace")])
def test_traces_agree_across_versions_and_backends(cruxeval, reference_traces, version, backend):
    traces = _trace_all(version, backend, _items(cruxeval))
    differing = [k for k, ref in reference_traces.items() if traces[k]["text"] != ref["text"]]
    assert differing == [], f"{len(differing)} traces differ from 3.11/settrace, e.g. {differing[:5]}"
