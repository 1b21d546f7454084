"""Offline corpora, each written as Parquet shards with a manifest (``opencwm.shards``):

- ``code``: Python source of the standard library and the installed packages, deduplicated by content, with the
  package and license of every file;
- ``programs``: synthetic programs with their calls (``opencwm.data.synthetic``); ``opencwm trace collect`` reads
  such a dataset directly, which gives the trace corpus.

CruxEval is held out of every corpus: ``cruxeval_overlap`` finds any CruxEval function body in a set of texts.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import random
import re
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa

from opencwm.data.synthetic import ProgramGenerator
from opencwm.shards import CODE_KIND, PROGRAMS_KIND, ShardWriter

CODE_SCHEMA = pa.schema([("id", pa.string()), ("item", pa.string()), ("path", pa.string()),
                         ("package", pa.string()), ("license", pa.string()), ("text", pa.string())])
PROGRAMS_SCHEMA = pa.schema([("id", pa.string()), ("item", pa.string()), ("source", pa.string()),
                             ("call", pa.string()), ("difficulty", pa.int32()), ("features", pa.string())])
_SKIP_PARTS = {"__pycache__", "test", "tests", "idlelib", "turtledemo", "site-packages"}


def _license_of(dist: importlib.metadata.Distribution) -> str:
    meta = dist.metadata
    for key in ("License-Expression", "License"):
        value = (meta.get(key) or "").strip()
        if value and len(value) < 80 and value.upper() != "UNKNOWN":
            return value
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License")]
    if classifiers:
        return "; ".join(classifiers)
    files = meta.get_all("License-File") or []
    return f"see {files[0]} in the {meta.get('Name')} distribution" if files else "unknown"


def package_of_files() -> dict[Path, tuple[str, str]]:
    """Installed file -> (distribution name, license), from the distributions' RECORD files."""
    owners: dict[Path, tuple[str, str]] = {}
    for dist in importlib.metadata.distributions():
        name, license_ = dist.metadata.get("Name") or "unknown", _license_of(dist)
        for file in dist.files or []:
            if str(file).endswith(".py"):
                owners[Path(dist.locate_file(file)).resolve()] = (name, license_)
    return owners


def code_files(include_site_packages: bool = True) -> Iterator[tuple[Path, Path, str, str]]:
    """(file, root, package, license) for every Python file of the stdlib and (optionally) site-packages."""
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    for path in sorted(stdlib.rglob("*.py")):
        if not _SKIP_PARTS & set(path.relative_to(stdlib).parts[:-1]):
            yield path, stdlib, "python-stdlib", "PSF-2.0"
    if include_site_packages:
        purelib = Path(sysconfig.get_paths()["purelib"]).resolve()
        owners = package_of_files()
        for path in sorted(purelib.rglob("*.py")):
            if {"__pycache__"} & set(path.parts):
                continue
            name, license_ = owners.get(path.resolve(), ("unknown", "unknown"))
            yield path, purelib, name, license_


def build_code_corpus(out: str | Path, *, include_site_packages: bool = True, max_files: int | None = None,
                      max_file_bytes: int = 200_000, holdout: Holdout | None = None) -> dict:
    """The code corpus. Every file looked at is counted once: ``written``, or dropped as one of ``duplicates``,
    ``held_out`` (it contains a held-out program), ``too_large``, ``empty``, ``unreadable``, or ``resumed`` (done
    by an earlier run of this dataset); they add up to ``files``."""
    writer = ShardWriter(out, CODE_SCHEMA, CODE_KIND, metadata={"sources": "stdlib + site-packages"})
    done = writer.finished_items()
    seen: set[str] = set()
    counts = dict.fromkeys(("files", "written", "duplicates", "held_out", "too_large", "empty", "unreadable",
                            "resumed"), 0)
    for path, root, package, license_ in code_files(include_site_packages):
        if max_files is not None and counts["files"] >= max_files:
            break
        counts["files"] += 1
        key = f"{package}:{path.relative_to(root)}"
        if key in done:
            counts["resumed"] += 1
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = None
        digest = hashlib.sha256(text.encode()).hexdigest() if text is not None else ""
        dropped = ("unreadable" if text is None else "duplicates" if digest in seen
                   else "too_large" if len(text) > max_file_bytes else "empty" if not text.strip()
                   else "held_out" if holdout is not None and holdout.matches(text) else None)
        if text is not None and dropped != "duplicates":
            seen.add(digest)
        if dropped:
            counts[dropped] += 1
            writer.add(key, [])
            continue
        writer.add(key, [{"id": digest[:16], "path": str(path.relative_to(root)), "package": package,
                          "license": license_, "text": text}])
        counts["written"] += 1
    writer.close()
    return {"out": str(out), **counts}


def build_program_corpus(out: str | Path, count: int, *, difficulty: int = 2, seed: int = 0,
                         hard_share: float = 0.0, force: bool = False) -> dict:
    """``count`` synthetic programs; a ``hard_share`` of them one difficulty level up (a longer tail of long
    traces at little cost in the median). A rerun with the same settings resumes; with others it is refused
    (``DatasetError``) unless ``force`` starts the dataset over."""
    if not 0 <= hard_share <= 1:
        raise ValueError("hard_share must be between 0 and 1")
    config = {"count": count, "difficulty": difficulty, "seed": seed, "hard_share": hard_share}
    writer = ShardWriter(out, PROGRAMS_SCHEMA, PROGRAMS_KIND, metadata=config, config=config, force=force)
    done = writer.finished_items()
    generators = {difficulty: ProgramGenerator(seed=seed, difficulty=difficulty)}
    if hard_share > 0 and difficulty < 5:
        generators[difficulty + 1] = ProgramGenerator(seed=seed + 7_919, difficulty=difficulty + 1)
    chooser = random.Random(f"{seed}:hard")
    for index in range(count):
        level = difficulty + 1 if len(generators) > 1 and chooser.random() < hard_share else difficulty
        program = generators[level].program()  # always drawn, so a resumed run yields the same programs
        key = f"program-{seed}-{difficulty}-{index:07d}"
        if key in done:
            continue
        writer.add(key, [{"id": key, "source": program.source, "call": program.call, "difficulty": level,
                          "features": json.dumps(program.features)}])
    writer.close()
    return {"out": str(out), "programs": count}


def _normalize(code: str) -> str:
    return re.sub(r"\s+", " ", code).strip()


class Holdout:
    """Evaluation programs (CruxEval's ``{"code", "id"}`` items) that must not appear in training text: a text is
    contaminated when it contains one of their function bodies (whitespace-normalised, def line excluded)."""

    def __init__(self, items: Iterable[dict], min_chars: int = 20):
        self.bodies: dict[str, str] = {}
        for item in items:
            body = _normalize("\n".join(item["code"].strip().split("\n")[1:]))
            if len(body) >= min_chars:  # a shorter body would match by chance
                self.bodies[item["id"]] = body

    def matches(self, text: str) -> set[str]:
        flat = _normalize(text)
        return {key for key, body in self.bodies.items() if body in flat}


def cruxeval_overlap(texts: Iterable[str], cruxeval: Iterable[dict]) -> set[str]:
    """Ids of the held-out items found in any of ``texts``."""
    holdout = Holdout(cruxeval)
    found: set[str] = set()
    for text in texts:
        found |= holdout.matches(text)
    return found
