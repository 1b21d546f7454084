"""``opencwm data``: the training corpora.

    opencwm data code --out runs/code [--holdout cruxeval.jsonl] [--max-files N]
    opencwm data programs --out runs/programs --count 1000 --difficulty 2 [--seed S] [--force]
"""

from __future__ import annotations

import json
from pathlib import Path

from opencwm.errors import UsageError as CliError


def _holdout(path):
    if path is None:
        return None
    from opencwm.data.corpora import Holdout

    try:
        return Holdout(json.loads(line) for line in Path(path).read_text().splitlines() if line.strip())
    except (OSError, ValueError, KeyError) as exc:
        raise CliError(f"--holdout {path}: cannot read held-out programs ({exc})") from None


def cmd_data_code(args) -> int:
    from opencwm.data.corpora import build_code_corpus
    from opencwm.shards import DatasetError

    try:
        summary = build_code_corpus(args.out, include_site_packages=not args.stdlib_only, max_files=args.max_files,
                                    holdout=_holdout(args.holdout))
    except DatasetError as exc:
        raise CliError(str(exc)) from None
    print(json.dumps(summary))
    return 0


def cmd_data_programs(args) -> int:
    from opencwm.data.corpora import build_program_corpus
    from opencwm.shards import DatasetError

    if args.count < 1:  # (--difficulty: argparse's choices)
        raise CliError("--count must be positive")
    try:
        summary = build_program_corpus(args.out, args.count, difficulty=args.difficulty, seed=args.seed,
                                       hard_share=args.hard_share, force=args.force)
    except (DatasetError, ValueError) as exc:
        raise CliError(str(exc)) from None
    print(json.dumps(summary))
    return 0


def add_parser(areas) -> None:
    data = areas.add_parser("data", help="training corpora")
    data_commands = data.add_subparsers(dest="command", metavar="COMMAND", required=True)
    code = data_commands.add_parser("code", help="Python source of the stdlib and installed packages, deduplicated, "
                                                 "with licenses, as Parquet shards")
    code.add_argument("--out", required=True, help="dataset directory (created or resumed)")
    code.add_argument("--stdlib-only", action="store_true", help="the standard library only, no site-packages")
    code.add_argument("--max-files", type=int, help="look at the first N files only (default: all)")
    code.add_argument("--holdout", help="JSONL of {code, id} programs to keep out: files containing one are "
                                        "dropped (e.g. CruxEval; default: none)")
    code.set_defaults(func=cmd_data_code)
    programs = data_commands.add_parser("programs", help="synthetic programs with inputs (then: opencwm trace "
                                                         "collect DIR --out TRACES)")
    programs.add_argument("--out", required=True,
                          help="dataset directory (created, or resumed when made with the same options)")
    programs.add_argument("--count", type=int, default=1000, help="programs to generate")
    programs.add_argument("--difficulty", type=int, default=2, choices=range(1, 6), metavar="{1..5}",
                          help="1 (easiest) to 5")
    programs.add_argument("--seed", type=int, default=0, help="random seed")
    programs.add_argument("--hard-share", type=float, default=0.0,
                          help="share of programs one difficulty level up (default: %(default)s)")
    programs.add_argument("--force", action="store_true",
                          help="start --out over when it was made with other options (default: refuse)")
    programs.set_defaults(func=cmd_data_programs)
