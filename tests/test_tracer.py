"""Golden tests of the tracer, construct by construct, each checked against what the real interpreter does.

Two independent references: the program run for real (return values, exceptions, generator outputs, call
counts), and a five-line ``sys.settrace`` recorder that logs raw line events with their locals (for programs
whose statements are one line each, the documented rules leave those events unchanged except for merging
immediate repeats).
"""

from __future__ import annotations

import re
import sys
import textwrap

import pytest

from opencwm.trace.codec import decode, encode, resolve_locals
from opencwm.trace.program import trace_program
from opencwm.trace.record import CALL, ERROR, EXCEPTION, LINE, OK, RAISED, RETURN, TRUNCATED
from opencwm.trace.tracer import BACKENDS, Limits, native_available

AVAILABLE = [b for b in BACKENDS
             if (b != "monitoring" or sys.version_info >= (3, 12)) and (b != "native" or native_available())]

PROGRAMS = {
    "nested": ("""
def double(x):
    return x * 2

def f(x):
    y = double(x)
    z = double(y) + 1
    return z
""", "f(3)"),
    "recursion": ("""
def fact(n):
    if n <= 1:
        return 1
    return n * fact(n - 1)
""", "fact(4)"),
    "generator": ("""
def countdown(n):
    while n > 0:
        yield n
        n -= 1

def f(n):
    out = []
    for v in countdown(n):
        out.append(v * 10)
    return out
""", "f(3)"),
    "closure": ("""
def make(k):
    def scale(x):
        return x * k
    return scale

def f(xs):
    s = make(3)
    total = 0
    for x in xs:
        total += s(x)
    return total
""", "f([1, 2])"),
    "method": ("""
class Counter:
    def __init__(self, start):
        self.n = start

    def bump(self, by):
        self.n += by
        return self.n

def f(a):
    c = Counter(a)
    c.bump(2)
    return c.bump(5)
""", "f(1)"),
    "lambda": ("""
def f(xs):
    key = lambda s: (len(s), s)
    ys = sorted(xs, key=key)
    return ys
""", "f(['ccc', 'a', 'bb'])"),
    "try_finally": ("""
def risky(x):
    if x < 0:
        raise ValueError('negative')
    return x

def f(xs):
    good = 0
    for x in xs:
        try:
            good += risky(x)
        except ValueError:
            good -= 1
        finally:
            last = x
    return good
""", "f([1, -2, 3])"),
    "uncaught": ("""
def parse(s):
    return int(s)

def f(s):
    n = parse(s)
    return n + 1
""", "f('x1')"),
    "with_block": ("""
class Box:
    def __init__(self):
        self.log = []

    def __enter__(self):
        self.log.append('in')
        return self

    def __exit__(self, kind, value, tb):
        self.log.append('out')
        return False

def f(v):
    box = Box()
    with box as b:
        b.log.append(v)
    return box.log
""", "f(7)"),
    "containers": ("""
def f(n):
    xs = list(range(n))
    xs = 5
    inner = [1]
    outer = [inner, (inner,)]
    inner.append(2)
    flags = [1, 0, 1]
    flags[0] = True
    d = {"a": 0.0}
    d["a"] = -0.0
    d["a"] = 0
    s = {1}
    s.add(2)
    s.discard(2)
    inner[0] = 1.0
    inner[0] = 1
    return outer
""", "f(30)"),
    "finally_unwind": ("""
def g():
    try:
        raise KeyError('k')
    finally:
        cleaned = True

def f():
    try:
        g()
    except KeyError as e:
        return str(e)
""", "f()"),
}


def run_real(source: str, call: str):
    namespace: dict = {}
    exec(compile(textwrap.dedent(source), "<real>", "exec"), namespace)
    try:
        return "ok", eval(call, namespace)
    except Exception as exc:
        return "raised", exc


def reference_lines(source: str, call: str):
    """Raw (function, line, locals) of every line event in functions of the program, by sys.settrace."""
    namespace: dict = {"__name__": "__main__"}
    exec(compile(textwrap.dedent(source), "<ref>", "exec"), namespace)
    events = []

    def tracer(frame, event, arg):
        if frame.f_code.co_filename != "<ref>" or frame.f_code.co_name in ("<listcomp>", "<genexpr>"):
            return None
        if event == "line":
            events.append((frame.f_lineno, {k: repr(v) for k, v in frame.f_locals.items() if k[0] != "."}))
        return tracer

    sys.settrace(tracer)
    try:
        eval(call, namespace)
    except Exception:
        pass
    finally:
        sys.settrace(None)
    return events


def trace_of(name: str, backend: str = "settrace"):
    source, call = PROGRAMS[name]
    return trace_program(textwrap.dedent(source), call, backend=backend)


@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_outcome_matches_real_python(name, backend):
    source, call = PROGRAMS[name]
    trace = trace_of(name, backend)
    kind, real = run_real(source, call)
    if kind == "ok":
        assert trace.status == OK
        assert trace.return_value == repr(real)
    else:
        assert trace.status == RAISED
        assert trace.frames[-1].event == EXCEPTION and trace.frames[-1].value == repr(real)
    # Scopes are balanced: every call frame is closed by one return or exception frame.
    depth = 0
    for frame in trace.frames:
        depth += {CALL: 1, RETURN: -1, EXCEPTION: -1}.get(frame.event, 0)
        assert depth >= 0
    assert depth == 0
    assert encode(decode(encode(trace))) == encode(trace)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_line_steps_and_locals_match_a_plain_settrace_recorder(name):
    source, call = PROGRAMS[name]
    trace = trace_of(name)
    addresses: dict[str, str] = {}

    def renumber(match):  # the documented address normalisation: 0x1, 0x2, ... by first appearance
        return addresses.setdefault(match.group(0), f"0x{len(addresses) + 1}")

    reference = [
        (lineno, {k: re.sub(r"0x[0-9a-f]{6,}", renumber, v) for k, v in locals_.items()})
        for lineno, locals_ in reference_lines(source, call)
    ]
    ours = [(f.lineno, loc) for f, loc in zip(trace.frames, resolve_locals(trace.frames)) if f.event == LINE]
    assert [n for n, _ in ours] == [n for n, _ in reference]
    assert [loc for _, loc in ours] == [loc for _, loc in reference]


def test_recursion_has_one_call_frame_per_real_call_with_real_arguments():
    trace = trace_of("recursion")
    calls = [f for f in trace.frames if f.event == CALL]
    assert [c.locals for c in calls] == [{"n": str(n)} for n in (4, 3, 2, 1)]
    returns = [f.value for f in trace.frames if f.event == RETURN]
    assert returns == ["1", "2", "6", "24"]  # innermost first, each the real factorial


def test_generator_yields_and_resumes():
    trace = trace_of("generator")
    gen_frames = [f for f in trace.frames if f.line.strip().startswith(("def countdown", "yield", "while"))]
    yielded = [f.value for f in trace.frames if f.event == RETURN and f.line.strip() == "yield n"]
    assert yielded == ["3", "2", "1"]  # what list(countdown(3)) gives
    resumptions = [f for f in trace.frames if f.event == CALL and f.line.startswith("def countdown")]
    assert len(resumptions) == 4  # first start + three resumptions (the last one finishes the loop)
    assert resumptions[1].locals == {"n": "3"}  # a resumed scope shows its full state
    assert gen_frames


def test_closure_shows_free_variable():
    trace = trace_of("closure")
    scale_calls = [f for f in trace.frames if f.event == CALL and "def scale" in f.line]
    assert [c.locals for c in scale_calls] == [{"x": "1", "k": "3"}, {"x": "2", "k": "3"}]


def test_methods_and_with_block_step_into_dunder_methods():
    trace = trace_of("with_block")
    entered = [f.line.strip() for f in trace.frames if f.event == CALL]
    assert entered == ["def f(v):", "def __init__(self):", "def __enter__(self):",
                       "def __exit__(self, kind, value, tb):"]
    exit_call = next(f for f in trace.frames if f.event == CALL and "__exit__" in f.line)
    assert exit_call.locals["kind"] == "None" and exit_call.locals["value"] == "None"


def test_lambda_is_stepped_into_once_per_real_call():
    trace = trace_of("lambda")
    assert sum(1 for f in trace.frames if f.event == CALL and "lambda" in f.line) == 3
    assert {f.value for f in trace.frames if f.event == RETURN and "lambda" in f.line} == {
        repr((len(s), s)) for s in ["ccc", "a", "bb"]
    }


def test_exception_frames_mark_scopes_left_by_exceptions():
    trace = trace_of("try_finally")
    risky_exits = [(f.event, f.value) for f in trace.frames if f.event in (RETURN, EXCEPTION) and "risky" not in f.line
                   and f.lineno in (3, 4, 5)]
    assert (EXCEPTION, repr(ValueError("negative"))) in risky_exits
    lines = [f.lineno for f in trace.frames if f.event == LINE]
    assert lines.count(15) == 3  # the finally block runs once per element, exception or not

    unwind = trace_of("finally_unwind")
    g_frames = [f for f in unwind.frames if f.lineno in (2, 3, 4, 5, 6)]
    assert [f.event for f in g_frames][-1] == EXCEPTION
    assert g_frames[-2].line.strip() == "cleaned = True"  # finally ran before the scope was left
    assert unwind.return_value == repr("'k'")


def test_uncaught_exception_ends_the_trace_in_every_scope():
    trace = trace_of("uncaught")
    assert trace.status == RAISED
    tail = [(f.event, f.line.strip()) for f in trace.frames[-2:]]
    assert tail == [(EXCEPTION, "return int(s)"), (EXCEPTION, "n = parse(s)")]
    assert encode(trace).endswith("<|end_of_text|>")


def test_multiline_statement_is_one_step_named_by_its_first_line():
    source = "def f(a):\n    s = (a +\n         a *\n         2)\n    return s\n"
    trace = trace_program(source, "f(2)")
    assert [(f.event, f.lineno) for f in trace.frames] == [(CALL, 1), (LINE, 2), (LINE, 5), (RETURN, 5)]
    assert trace.return_value == "6"


def test_comprehensions_are_atomic_but_calls_inside_them_are_traced():
    source = "def sq(x):\n    return x * x\n\ndef f(xs):\n    ys = [sq(x) for x in xs if x]\n    return sum(ys)\n"
    trace = trace_program(source, "f([0, 2, 3])")
    assert [f.line.strip() for f in trace.frames if f.event == CALL] == ["def f(xs):", "def sq(x):", "def sq(x):"]
    assert all(".0" not in (f.locals or {}) for f in trace.frames)
    lines = [f.lineno for f in trace.frames if f.event == LINE and f.lineno == 5]
    assert lines == [5]
    assert trace.return_value == "13"


def test_decorated_function_call_frame_names_its_def_line():
    source = "import functools\n\n@functools.lru_cache\ndef g(x):\n    return x + 1\n\ndef f():\n    return g(1)\n"
    trace = trace_program(source, "f()")
    assert [f.line for f in trace.frames if f.event == CALL] == ["def f():", "def g(x):"]


def test_unchanged_values_use_dots_and_resolve_back():
    trace = trace_program("def f(a):\n    b = a + 1\n    a = a\n    c = [b]\n    return c\n", "f(1)")
    line_locals = [f.locals for f in trace.frames if f.event == LINE]
    assert line_locals == [{"a": ".."}, {"a": "..", "b": "2"}, {"a": "..", "b": ".."}, {"a": "..", "b": "..",
                                                                                          "c": "[2]"}]
    resolved = [r for r in resolve_locals(trace.frames) if r]
    assert resolved[-1] == {"a": "1", "b": "2", "c": "[2]"}


@pytest.mark.parametrize("backend", AVAILABLE)
def test_limits_cut_the_trace_visibly(backend):
    source = "def f(n):\n    i = 0\n    while True:\n        i += 1\n"
    trace = trace_program(source, "f(0)", limits=Limits(max_frames=50), backend=backend)
    assert trace.status == TRUNCATED and len(trace.frames) == 50 and "frames limit" in trace.error
    text = encode(trace)
    assert not text.endswith("<|end_of_text|>")
    assert decode(text).truncated
    big = trace_program("def f():\n    x = 'a' * 100\n    return x * 1000\n", "f()", limits=Limits(max_bytes=500),
                        backend=backend)
    assert big.status == TRUNCATED and "bytes limit" in big.error
    # The program goes on untraced after the cut: it is stopped, not left running under a half-removed tracer.
    assert sys.gettrace() is None


@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize(("call", "limits"), [("f(3)", None), ("f(-1)", None), ("f(10 ** 6)", Limits(max_frames=40))])
def test_a_trace_function_installed_before_is_put_back(backend, call, limits):
    """A debugger or coverage tool that traces the caller keeps tracing after the call, however the call ends
    (returned, raised, cut at a limit)."""
    seen = []

    def outer(frame, event, arg):
        seen.append(event)
        return None

    sys.settrace(outer)
    try:
        trace = trace_program("def f(n):\n    if n < 0:\n        raise ValueError(n)\n    for i in range(n):\n"
                              "        n += i\n    return n\n", call, limits=limits, backend=backend)
        after = sys.gettrace()
    finally:
        sys.settrace(None)
    assert after is outer
    assert trace.frames and trace.status == (TRUNCATED if limits else OK if call == "f(3)" else RAISED)


@pytest.mark.skipif(not native_available(), reason="the native tracer is not built (make native)")
@pytest.mark.parametrize("backend", AVAILABLE)
def test_a_trace_taken_inside_a_traced_call_leaves_the_outer_trace_going(backend):
    """Nested tracing (a traced program that traces a call itself, as the collector's own tests do): the inner
    trace puts the outer tracer back, C or Python, and the outer trace goes on after the inner call."""
    from opencwm.trace.tracer import trace_call

    inner_source = "def g(x):\n    y = x * 2\n    return y\n"
    namespace: dict = {}
    exec(compile(inner_source, "<inner>", "exec"), namespace)
    outer_source = ("def f(trace_call, g, source):\n    t = trace_call(g, (3,), source=source, filename='<inner>', "
                    "backend='native')\n    z = t.return_value\n    return z\n")
    exec(compile(outer_source, "<outer>", "exec"), namespace)
    outer = trace_call(namespace["f"], (trace_call, namespace["g"], inner_source), source=outer_source,
                       filename="<outer>", backend=backend)
    assert outer.status == OK and outer.return_value == "'6'"
    assert [frame.lineno for frame in outer.frames if frame.event == LINE] == [2, 3, 4]
    assert sys.gettrace() is None


@pytest.mark.parametrize(("source", "call", "message"), [
    ("def f(:\n", "f()", "syntax error"),
    ("def f(): pass\n", "g()", "NameError"),
    ("def f(): pass\n", "f(", "bad call expression"),
    ("def f(): pass\n", "1 + 2", "expected a call"),
    ("raise SystemExit(3)\n", "f()", "module code raised"),
    ("def f(): pass\n", "len([])", "not a function defined in the program"),
])
def test_setup_errors_are_reported_not_raised(source, call, message):
    trace = trace_program(source, call)
    assert trace.status == ERROR and message in trace.error and not trace.frames


@pytest.mark.parametrize("backend", AVAILABLE)
def test_a_failure_of_the_tracer_itself_is_reported_not_hidden(monkeypatch, backend):
    """Fault injection: were the tracer to raise, the trace says so instead of passing as an ok trace."""
    from opencwm.trace.values import Renderer

    def broken(self, value):
        raise RuntimeError("injected")

    monkeypatch.setattr(Renderer, "render", broken)  # an instance of a user class is always rendered by it
    trace = trace_program("class A:\n    pass\n\ndef f(x):\n    y = x\n    return y\n", "f(A())", backend=backend)
    assert trace.status == ERROR and "the tracer failed: RuntimeError: injected" in trace.error
    assert sys.gettrace() is None


def test_the_native_backend_is_built_where_a_compiler_is():
    import shutil

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here: the tracer runs on its pure-Python backends")
    assert native_available(), "the C tracer is not built: run `make install` (python -m opencwm.trace.build_native)"


def test_hash_seed_and_addresses_make_traces_deterministic():
    import os
    import subprocess

    code = ("from opencwm.trace.program import trace_program; from opencwm.trace.codec import encode; "
            "print(encode(trace_program('class A: pass\\ndef f():\\n    s = {\"x\", \"y\", \"z\"}\\n"
            "    a = A()\\n    return s, a\\n', 'f()')))")
    outputs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONHASHSEED": "0"}).stdout
        for _ in range(3)
    }
    assert len(outputs) == 1 and "0x1" in outputs.pop()


@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("program", ["recursion", "uncaught", "generator"])
def test_a_trace_is_freed_with_its_last_reference(backend, program):
    """Nothing but the returned trace holds its frames: the tracer lets go of the interpreter frames (whose callers'
    locals hold the tracer's own objects), so a trace is freed when dropped, not by a later pass of the cyclic GC."""
    import gc

    gc.disable()
    try:
        source, call = PROGRAMS[program]
        trace = trace_program(source, call, backend=backend)
        references = sys.getrefcount(trace.frames)  # (outside an assert: pytest's rewriting keeps temporaries)
        assert len(trace.frames) > 1
        assert references == 2  # the trace's attribute and getrefcount's argument
    finally:
        gc.enable()
