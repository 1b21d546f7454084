"""The C tracer (backend "native") against the pure-Python one (backend "settrace"): byte-identical traces.

The Python backend is the definition (its own golden tests check it against the real interpreter); the C backend
re-implements its hot path, its fast rendering of simple values and containers, and a cheaper proof that a
container is unchanged. Here both trace the same programs, over values generated around every limit the renderer
has (containers shown whole or cut, items that are atoms or not, reprs that are user code), with a small and the
default value budget. CruxEval and the golden programs are compared on every CPython in test_versions.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opencwm.trace.codec import encode
from opencwm.trace.program import trace_program
from opencwm.trace.tracer import Limits, native_available

pytestmark = pytest.mark.skipif(not native_available(), reason="the native tracer is not built (make native)")

# A program that mutates its argument step by step in ways that keep or break each kind of proof.
MUTATOR = textwrap.dedent("""
    class Box:
        def __init__(self, v):
            self.v = v

    class Loud:
        def __repr__(self):
            raise ValueError("no repr")

    def f(v, ops):
        x = v
        y = [v, Box(1)]
        for op in ops:
            if op == 0 and isinstance(x, list):
                x.append(len(x))
            elif op == 1 and isinstance(x, list) and x:
                x[0] = x[-1]
            elif op == 2 and isinstance(x, dict):
                x[len(x)] = "at 0x1234>"
            elif op == 3:
                x = tuple(x) if not isinstance(x, dict) else x
            elif op == 4 and isinstance(x, list) and x:
                x.pop()
            elif op == 5:
                y[0] = Loud()
            elif op == 6 and isinstance(x, set):
                x.add(len(x))
            elif op == 7 and isinstance(x, list):
                x.insert(0, [1, [2]])
            elif op == 8 and isinstance(x, list) and x and isinstance(x[0], list):
                x[0].append(3)
            elif op == 9:
                del y
                y = [x]
        return x
""")

atoms = st.one_of(st.integers(-10**20, 10**20), st.booleans(), st.none(), st.floats(allow_nan=False),
                  st.text(max_size=8), st.binary(max_size=4), st.tuples(st.integers(), st.text(max_size=3)))
values = st.one_of(
    st.lists(atoms, max_size=400),
    st.lists(st.integers(0, 9), min_size=300, max_size=1200),
    st.dictionaries(st.integers(0, 500), atoms, max_size=300),
    st.sets(st.integers(-50, 50), max_size=40),
    st.lists(st.lists(st.integers(), max_size=3), max_size=30),
    st.lists(st.one_of(st.integers(), st.floats(), st.none(), st.booleans()), min_size=20, max_size=400),
    st.text(min_size=20, max_size=300),
    atoms,
)


def both(source: str, call: str, limits: Limits | None = None) -> tuple[str, str]:
    python = trace_program(source, call, backend="settrace", limits=limits)
    native = trace_program(source, call, backend="native", limits=limits)
    assert (native.status, native.error) == (python.status, python.error)
    return encode(python), encode(native)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=values, ops=st.lists(st.integers(0, 9), max_size=25), small=st.booleans())
def test_native_traces_equal_the_python_backend(value, ops, small):
    limits = Limits(max_value_chars=60) if small else None
    python, native = both(MUTATOR, f"f({value!r}, {ops!r})", limits)
    assert native == python


# Programs at the edges of what the C tracer does its own way (run on every CPython, here and in the test below).
EDGE_PROGRAMS = [
    ("def f(n):\n    xs = list(range(n))\n    for i in range(n):\n        xs[i] = -xs[i]\n    return xs[:2]\n",
     "f(700)"),
    ("def f(n):\n    d = {}\n    for i in range(n):\n        d[i] = str(i)\n    return len(d)\n", "f(400)"),
    ("def f(n):\n    s = ''\n    for i in range(n):\n        s += 'ab'\n    return len(s)\n", "f(1500)"),
    ("def f():\n    for n in (0, 1, 997, 998, 999, 1000, 1999, 2000, 2001, 2500):\n"
     "        for c in map(chr, (97, 34, 39, 92, 10, 127, 31, 32, 126)):\n"
     "            s = 'x' * (n - 1) + c if n else ''\n            t = c + 'y' * n\n    return len(s) + len(t)\n",
     "f()"),
    ("def f():\n    xs = []\n    for e in (63, 64):\n        for d in (-2, -1, 0, 1):\n"
     "            x = 2 ** e + d\n            y = -x\n            xs.append(y)\n    return xs\n", "f()"),
    ("def f():\n    big = 7 ** 400\n    t = (1, (2, [3]))\n    t[1][1].append(4)\n    return big % 10, t\n", "f()"),
    ("def g():\n    yield 1\n    raise KeyError('k')\n\ndef f():\n    try:\n        return list(g())\n"
     "    except KeyError as e:\n        return repr(e)\n", "f()"),
    # locals unbound and bound again (del, ``except ... as``), read from 3.11's fast-locals array
    ("def f(n):\n    a = 1\n    b = 2\n    del a\n    c = 3\n    a = 4\n    del b\n    b = [a, c]\n"
     "    try:\n        1 / 0\n    except ZeroDivisionError as e:\n        x = str(e)\n    return b, x\n", "f(3)"),
    # a scope with cells and free variables (read through f_locals) beside one without
    ("def f(n):\n    x = n\n    def h(k):\n        y = x + k\n        return y\n    z = h(1)\n    return z\n",
     "f(2)"),
    # whole sequences cut by characters, one-item tuples, non-ASCII items, a long list shrinking to a whole one
    ("def f(n):\n    xs = ['abcde'] * 300\n    t = (n,)\n    for i in range(n):\n        xs[i * 150] = 'é' * i\n"
     "        t = t + (xs[i],)\n    ys = list(range(400))\n    while len(ys) > 320:\n        ys.pop(0)\n"
     "        ys[0] = -len(ys)\n    return len(xs), t[:2], ys[:3]\n", "f(3)"),
    # more locals than fit the small buffer
    ("def f(n):\n" + "".join(f"    v{i} = n + {i}\n" for i in range(40)) + "    return v39\n", "f(1)"),
    # locals() and a write through f_locals: the frame's locals are then read from f_locals, not its fast array
    ("import sys\n\ndef f(n):\n    xs = [i * n for i in range(3)]\n    d = locals()\n    y = len(d)\n"
     "    sys._getframe().f_locals['zz'] = y\n    z = y + 1\n    return xs, z\n", "f(2)"),
]


@pytest.mark.parametrize(("source", "call"), EDGE_PROGRAMS)
def test_native_traces_equal_the_python_backend_on_edge_cases(source, call):
    python, native = both(source, call)
    assert native == python


@pytest.mark.parametrize("limits", [Limits(max_frames=37), Limits(max_bytes=2000),
                                    Limits(max_value_chars=30, max_frames=500)])
def test_native_cuts_traces_where_the_python_backend_does(limits):
    python, native = both("def f(n):\n    xs = []\n    while True:\n        xs.append(n)\n", "f(3)", limits)
    assert native == python and "<|end_of_text|>" not in native
    assert sys.gettrace() is None  # the tracer is removed once the trace is cut


# Values around the renderer's limits, for the other interpreters (hypothesis explores them on this one).
SAMPLES = [
    ([1, 2, 3], [0, 1, 4, 7, 8, 3]), (list(range(400)), [0, 1, 4, 3]), ([True] * 900, [1, 0, 5, 9]),
    ({i: str(i) for i in range(260)}, [2, 2, 3]), ({1: "a", 2: (3, "b")}, [2, 9]), ({-3, 5, 7}, [6, 6, 3]),
    ([[1], [2, [3]]], [7, 8, 8]), ("x" * 2500, [3, 5]), ([0.5, None, False, 10**30], [0, 1, 3]),
    ([b"ab", (1, ("c",)), "q at 0x1234>"], [0, 4, 4, 4]), (list(range(5000, 5400)), [1, 0, 0, 4]),
]


@pytest.mark.parametrize("version", ["3.12", "3.13"])
def test_native_traces_equal_the_python_backend_on_other_interpreters(version):
    from conftest import require_interpreter, run_python

    exe = require_interpreter(version)
    script = f"""
import sys
from opencwm.trace.codec import encode
from opencwm.trace.program import trace_program
from opencwm.trace.tracer import Limits, native_available
assert native_available(), "the native tracer is not built for " + sys.version
for value, ops in {SAMPLES!r}:
    for limits in (None, Limits(max_value_chars=60)):
        call = f"f({{value!r}}, {{ops!r}})"
        a = trace_program({MUTATOR!r}, call, backend="settrace", limits=limits)
        b = trace_program({MUTATOR!r}, call, backend="native", limits=limits)
        assert a.status == "ok" and len(a.frames) > 10, call
        assert encode(a) == encode(b) and a.status == b.status, call
for source, call in {EDGE_PROGRAMS!r}:
    a, b = (trace_program(source, call, backend=backend) for backend in ("settrace", "native"))
    assert encode(a) == encode(b) and a.status == b.status, call
print("ok")
"""
    assert run_python(exe, script).strip() == "ok"


def test_a_failed_build_keeps_the_working_module_and_says_why():
    from opencwm.trace import build_native

    target = build_native.target()
    before = target.read_bytes()
    result = subprocess.run([sys.executable, "-m", "opencwm.trace.build_native", "--force"], capture_output=True,
                            text=True, env={**os.environ, "CC": "/nonexistent/cc"})
    assert result.returncode != 0
    assert result.stderr.startswith("opencwm: the native tracer was not built") and "/nonexistent/cc" in result.stderr
    assert target.read_bytes() == before  # the library in use is left as it was
    assert not list(target.parent.glob(".partial-*"))
