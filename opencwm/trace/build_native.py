"""Build the tracer's C accelerator (``_native.c``) in place for the running interpreter.

``pip install`` builds it for the interpreter it installs into (see ``setup.py``); this builds it in a checkout for
any interpreter that runs opencwm from there, e.g. the CPython 3.12 and 3.13 that the version tests use. The
Makefile runs it for every interpreter it finds. Without a C compiler or Python's headers the tracer still works,
on its pure-Python backends.

    python3.12 -m opencwm.trace.build_native [--force]      (the compiler: $CC, else the one Python was built with)
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

SOURCE = Path(__file__).with_name("_native.c")


def target() -> Path:
    return SOURCE.with_name(f"_native{sysconfig.get_config_var('EXT_SUFFIX')}")


def build(force: bool = False) -> Path:
    """Compile ``_native.c`` for this interpreter unless an up-to-date build is there; the library is written under
    a temporary name and renamed, so a failed or interrupted build never leaves a broken module behind."""
    out = target()
    if not force and out.exists() and out.stat().st_mtime >= SOURCE.stat().st_mtime:
        return out
    compiler = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    include = sysconfig.get_paths()["include"]
    if not Path(include, "Python.h").exists():
        raise RuntimeError(f"Python's headers are missing ({include}/Python.h): install the -dev package of "
                           f"Python {sys.version_info.major}.{sys.version_info.minor}")
    partial = out.with_name(f".partial-{os.getpid()}-{out.name}")  # keeps the suffix: it must load to be kept
    command = [*compiler, "-shared", "-fPIC", "-O2", "-Wall", f"-I{include}", str(SOURCE), "-o", str(partial)]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE.name} failed:\n{result.stderr.strip()}")
        _check_loads(partial)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return out


def _check_loads(library: Path) -> None:
    """Import the new library in a child interpreter (a symbol this Python does not export shows only there)."""
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('_native', sys.argv[1]); "
            "importlib.util.module_from_spec(spec)")
    result = subprocess.run([sys.executable, "-c", code, str(library)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the compiled module does not load: {result.stderr.strip().splitlines()[-1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="rebuild even when the build is up to date")
    args = parser.parse_args()
    try:
        out = build(args.force)
    except (RuntimeError, OSError) as exc:
        sys.exit(f"opencwm: the native tracer was not built for Python {sys.version.split()[0]}: {exc}")
    print(f"native tracer for Python {sys.version.split()[0]}: {out}")


if __name__ == "__main__":
    main()
