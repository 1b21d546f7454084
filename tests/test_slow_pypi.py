"""Real-world check (make test-slow): harvest traces from the test suite of a real package downloaded from PyPI,
and replay traced calls against the real package."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from opencwm.sandbox import SandboxConfig
from opencwm.trace.collect import PRELOAD, CollectConfig, collect, read_traces

PACKAGE, VERSION, MODULE = "more-itertools", "10.5.0", "more_itertools"


def _call_arguments(function, args: dict) -> tuple[list, dict]:
    """Rebuild a call from the callee's locals at its call frame (its parameters, *args and **kwargs included)."""
    positional, keywords = [], {}
    for name, parameter in inspect.signature(function).parameters.items():
        value = args[name]
        if parameter.kind == parameter.VAR_POSITIONAL:
            positional.extend(value)
        elif parameter.kind == parameter.VAR_KEYWORD:
            keywords.update(value)
        elif parameter.kind == parameter.KEYWORD_ONLY:
            keywords[name] = value
        else:
            positional.append(value)
    return positional, keywords


@pytest.mark.slow
def test_real_pypi_package_suite_becomes_faithful_traces(tmp_path):
    download = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
         f"{PACKAGE}=={VERSION}", "-d", str(tmp_path)], capture_output=True, text=True)
    if download.returncode != 0:
        pytest.skip(f"PyPI unreachable: {download.stderr.strip().splitlines()[-1:]}")
    archive = next(tmp_path.glob("*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    root = next(p for p in tmp_path.iterdir() if p.is_dir())
    config = CollectConfig(workers=2, progress=False, sandbox=SandboxConfig(timeout=600, preload=PRELOAD))
    summary = collect(root, tmp_path / "ds", config)
    assert summary["traces"] > 100 and summary["statuses"].get("ok", 0) > 100

    # The downloaded release, not a copy some other package may have imported already.
    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] == MODULE}
    sys.path.insert(0, str(root))
    try:
        real = importlib.import_module(f"{MODULE}.more")
        recipes = importlib.import_module(f"{MODULE}.recipes")
        assert Path(real.__file__).is_relative_to(root)
    finally:
        sys.path.pop(0)
        for name in [n for n in sys.modules if n.split(".")[0] == MODULE]:
            del sys.modules[name]
        sys.modules.update(saved)
    checked = 0
    for row, trace in read_traces(tmp_path / "ds"):
        module = recipes if row["module"].endswith("recipes.py") else real
        function = getattr(module, row["entry"], None)
        if trace.status != "ok" or function is None or "." in row["entry"]:
            continue
        if "random" in inspect.getsource(function):
            continue  # its result depends on the random state the test suite left behind
        try:
            args = {k: ast.literal_eval(v) for k, v in trace.frames[0].locals.items()}
            positional, keywords = _call_arguments(function, args)
            result = repr(function(*positional, **keywords))
            again = repr(function(*positional, **keywords))
        except (ValueError, SyntaxError, TypeError):
            continue  # arguments that are not literals (iterators, functions) cannot be replayed from text
        if " at 0x" in result or result != again:
            continue  # objects without a value repr, or a random result
        assert trace.return_value == result, (row["id"], args)
        checked += 1
    assert checked >= 20
