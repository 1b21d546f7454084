"""``opencwm sandbox``: the sandbox's self-check, and the sandbox options every command that runs untrusted code
shares (``--sandbox``, ``--timeout``, ``--memory-mb``, ``--python``).

    opencwm sandbox check [--without LAYER] [--sandbox BACKEND]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from opencwm.errors import UsageError as CliError


def add_sandbox_choice(parser) -> None:
    parser.add_argument("--sandbox", default="auto", choices=["auto", "bwrap", "unshare", "rlimits", "gvisor"],
                        help="isolation backend (default: the best that works here)")


def add_sandbox_args(parser: argparse.ArgumentParser, timeout: float) -> None:
    group = parser.add_argument_group("sandbox")
    add_sandbox_choice(group)
    group.add_argument("--timeout", type=float, default=timeout, help="seconds per item (default: %(default)s)")
    group.add_argument("--memory-mb", type=int, default=2048, help="memory limit per item (default: %(default)s)")
    group.add_argument("--python", default=sys.executable,
                       help="interpreter that runs the traced code, any CPython >= 3.11 (default: this one)")


def sandbox_config(args, preload=()):
    from opencwm.sandbox import SandboxConfig

    if args.timeout <= 0:
        raise CliError("--timeout must be positive")
    if args.memory_mb < 64:
        raise CliError("--memory-mb must be at least 64")
    if not Path(args.python).exists():
        raise CliError(f"--python {args.python}: no such interpreter")
    return SandboxConfig(backend=args.sandbox, timeout=args.timeout, memory_mb=args.memory_mb, python=args.python,
                         preload=tuple(preload))


def cmd_sandbox_check(args) -> int:
    from dataclasses import replace

    from opencwm.sandbox import LAYERS, SandboxError, SandboxUnavailable
    from opencwm.sandbox.check import format_header, format_verdict, run_checks

    unknown = [layer for layer in args.without if layer not in LAYERS]
    if unknown:
        raise CliError(f"--without {unknown[0]}: no such layer (choose from {', '.join(LAYERS)})")
    config = replace(sandbox_config(args), layers=tuple(layer for layer in LAYERS if layer not in args.without))
    print(format_header())
    try:
        backend, verdicts = run_checks(config, report=lambda v: print(format_verdict(v), flush=True))
    except (SandboxError, SandboxUnavailable) as exc:
        raise CliError(str(exc)) from None
    failed = [v for v in verdicts if not v.held]
    layers = ", ".join(config.layers) or "none"
    print(f"backend {backend}, layers: {layers}: {len(verdicts) - len(failed)} of {len(verdicts)} probes held"
          + (f"; FAILED: {', '.join(sorted({v.guarantee for v in failed}))}" if failed else ""))
    return 1 if failed else 0


def add_parser(areas) -> None:
    sandbox = areas.add_parser("sandbox", help="the sandbox for untrusted code")
    sandbox_commands = sandbox.add_subparsers(dest="command", metavar="COMMAND", required=True)
    check = sandbox_commands.add_parser(
        "check", help="show the backend in use and run hostile probes (exit 1 if one is not contained)")
    add_sandbox_args(check, timeout=3.0)
    check.add_argument("--without", action="append", default=[], metavar="LAYER",
                       help="turn a defence layer off, to see what it holds (repeatable; capabilities, seccomp, "
                            "mounts, cgroup, tmpfs, nondumpable)")
    check.set_defaults(func=cmd_sandbox_check)
