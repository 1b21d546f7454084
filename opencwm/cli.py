"""The ``opencwm`` command: one entry point, a subcommand per area, each area's commands in its own ``cli`` module
beside its code (``opencwm.trace.cli``, ``opencwm.data.cli``, ``opencwm.train.cli``, ``opencwm.eval.cli``,
``opencwm.model.cli``, ``opencwm.sandbox.cli``, ``opencwm.forage.cli``, ``opencwm.infer.cli``, ``opencwm.rl.cli``);
here: the parser every command shares (defaults in every help, usage errors as one line), the speedrun recipe's
command, and ``main``, which prints a ``UsageError`` (``opencwm.errors``) as one line with exit status 2.

    opencwm trace run|collect|show ...     opencwm data code|programs ...      opencwm train ...
    opencwm eval trace|cruxeval-o|cruxeval-i|humaneval|livecodebench|math500|aime24|aime25|swe|report|decontaminate ...
    opencwm speedrun --out runs/speedrun   opencwm model info ...
    opencwm sandbox check                  opencwm forage env|mutate|import|grade|run|show ...
    opencwm generate|chat ...              opencwm debug FILE --call 'f(1)' --model CKPT
    opencwm rl items|train|show ...

Imports stay inside the commands, so ``opencwm --help`` and ``trace run`` start fast (nothing imports torch).
"""

from __future__ import annotations

import argparse
import json
import sys

from opencwm.errors import UsageError, one_line

CliError = UsageError  # the CLI's name for the ground's user-error type


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says it or there is none to say."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or "default" in text or action.default in (None, False, argparse.SUPPRESS)
                or action.help == argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)".lstrip()


class _Parser(argparse.ArgumentParser):
    """opencwm's parsers (subcommands included): defaults shown in every help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        """A usage error as one line (argparse prints the whole usage first), exit status 2."""
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def cmd_speedrun(args) -> int:
    from dataclasses import fields

    from opencwm.speedrun import SpeedrunConfig, speedrun

    values = {f.name: getattr(args, f.name) for f in fields(SpeedrunConfig) if getattr(args, f.name, None) is not None}
    if args.no_traces:
        values["traces"] = False
    if args.no_compile:
        values["compile"] = False
    for name in ("cruxeval", "repo_package"):
        if getattr(args, name) == "none":
            values[name] = None
    try:
        config = SpeedrunConfig(**values)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    report = speedrun(config, ablation=not args.no_ablation)
    print(json.dumps({k: v for k, v in report.items() if k != "difficulty"}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version


    try:
        release = version("opencwm")
    except PackageNotFoundError:  # run from a checkout that was never installed
        release = "unknown"
    parser = _Parser(prog="opencwm", description="opencwm: an open Code World Model system.")
    parser.add_argument("--version", action="version", version=f"opencwm {release}")
    areas = parser.add_subparsers(dest="area", metavar="AREA", required=True)

    from opencwm.data.cli import add_parser as data_parser
    from opencwm.eval.cli import add_parser as eval_parser
    from opencwm.forage.cli import add_parser as forage_parser
    from opencwm.infer.cli import add_parser as infer_parser
    from opencwm.model.cli import add_parser as model_parser
    from opencwm.rl.cli import add_parser as rl_parser
    from opencwm.sandbox.cli import add_parser as sandbox_parser
    from opencwm.trace.cli import add_parser as trace_parser
    from opencwm.train.cli import add_parser as train_parser

    trace_parser(areas)
    data_parser(areas)
    train_parser(areas)
    eval_parser(areas)
    run = areas.add_parser("speedrun", help="corpora -> tokenizer -> pretrain -> midtrain -> SFT -> eval, with the "
                                            "no-traces ablation; writes report.md and report.json")
    from dataclasses import fields

    from opencwm.speedrun import SpeedrunConfig

    defaults = SpeedrunConfig()
    for option in fields(SpeedrunConfig):  # an option per field; the booleans are the --no-... flags below
        if option.name in ("traces", "compile") or not option.metadata.get("cli", True):
            continue
        default = getattr(defaults, option.name)
        help_text = option.metadata.get("help", option.name.replace("_", " "))
        run.add_argument(f"--{option.name.replace('_', '-')}", type=type(default) if default is not None else str,
                         default=None, help=f"{help_text} (default: {default})")
    run.add_argument("--no-traces", action="store_true", help="run only the ablation (code instead of traces)")
    run.add_argument("--no-ablation", action="store_true", help="skip the no-traces comparison run")
    run.add_argument("--no-compile", action="store_true", help="train eagerly (no torch.compile of the blocks)")
    run.set_defaults(func=cmd_speedrun)
    model_parser(areas)
    sandbox_parser(areas)
    forage_parser(areas)
    infer_parser(areas)
    rl_parser(areas)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"opencwm: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("opencwm: interrupted (finished results are kept)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (| head): not an error; nothing more to write
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # python -m opencwm.cli: run the imported module, so its exception classes are shared
    from opencwm.cli import main as package_main

    sys.exit(package_main())
