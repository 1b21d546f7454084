"""Parquet shards with a manifest: the dataset format of every corpus opencwm writes (traces, trajectories, ...).

A dataset directory holds ``shard-NNNNN.parquet`` files and ``manifest.json``. The manifest is the source of
truth: a shard exists for readers once it is listed there. Both are written to a temporary name and renamed, so a
process killed at any moment leaves either the old state or the new one, never a half-written file; shard files
the manifest does not list (a kill between the two renames) are deleted when the dataset is reopened, and their
items are redone.

Every row belongs to a work item (column ``item``); items that produced no rows are listed per shard in the
manifest (``empty_items``), so a resumed run knows every finished item. A dataset remembers the schema and the
configuration that made it (``config``): reopening it with another is refused (a resumed run would mix two
datasets under one manifest) unless the writer is told to start over (``force``). Readable with ``pyarrow.dataset`` or
``datasets.load_dataset("parquet", data_files=...)`` from the files the manifest lists.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "manifest.json"

# Dataset kinds (the manifest's "kind"): every corpus opencwm writes, named in one place.
CODE_KIND = "opencwm.code"  # source files (opencwm data code)
PROGRAMS_KIND = "opencwm.programs"  # synthetic programs with a call (opencwm data programs)
TRACES_KIND = "opencwm.traces"  # execution traces (opencwm trace collect)
TASKS_KIND = "opencwm.forage.tasks"  # mutate-fix and issue-fix tasks (opencwm forage mutate / import)
TRAJECTORIES_KIND = "opencwm.forage.trajectories"  # agent episodes (opencwm forage run)


class DatasetError(ValueError):
    """A dataset directory is missing, malformed, or of another kind."""


class BadRows(DatasetError):
    """An item's rows do not fit the dataset's schema (and the writer was given no way to replace them)."""


_CONVERSION_ERRORS = (pa.ArrowException, TypeError, ValueError, OverflowError)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise DatasetError(f"{directory} is not an opencwm dataset (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or "shards" not in manifest:
        raise DatasetError(f"{path} is not an opencwm manifest")
    return manifest


def shard_paths(directory: str | Path) -> list[Path]:
    return [Path(directory) / shard["file"] for shard in read_manifest(directory)["shards"]]


def read_rows(directory: str | Path, columns: list[str] | None = None) -> Iterator[dict]:
    for path in shard_paths(directory):
        yield from pq.read_table(path, columns=columns).to_pylist()


class ShardWriter:
    """Appends rows to a dataset directory, shard by shard; reopening it resumes where the last run stopped."""

    def __init__(self, directory: str | Path, schema: pa.Schema, kind: str, *, rows_per_shard: int = 2000,
                 seconds_per_shard: float = 60.0, metadata: dict | None = None,
                 on_bad_rows: Callable[[str, list[dict], str], list[dict]] | None = None,
                 config: dict | None = None, force: bool = False):
        self.directory = Path(directory)
        self.schema = schema
        self.kind = kind
        self.rows_per_shard = rows_per_shard
        self.seconds_per_shard = seconds_per_shard
        self.on_bad_rows = on_bad_rows  # (item, its rows, reason) -> the rows to keep instead (e.g. an error row)
        self.directory.mkdir(parents=True, exist_ok=True)
        if (self.directory / MANIFEST).exists():
            self.manifest = read_manifest(self.directory)
            if self.manifest.get("kind") != kind:
                raise DatasetError(f"{directory} holds a {self.manifest.get('kind')!r} dataset, not {kind!r}")
            if force:
                (self.directory / MANIFEST).unlink()
            else:
                _check_resumable(self.directory, self.manifest, schema, config)
        if not (self.directory / MANIFEST).exists():
            self.manifest = {"kind": kind, "format_version": 1, "schema": _describe(schema), "rows": 0,
                             "shards": [], "metadata": metadata or {}}
            if config is not None:
                self.manifest["config"] = config
        self._remove_unlisted()
        self._rows: list[tuple[str, list[dict]]] = []
        self._pending = 0
        self._empty: list[str] = []
        self._last_flush = time.monotonic()

    def _remove_unlisted(self) -> None:
        listed = {shard["file"] for shard in self.manifest["shards"]}
        for path in self.directory.glob("shard-*.parquet"):
            if path.name not in listed:
                path.unlink()
        for path in self.directory.glob(".*.tmp"):
            path.unlink()

    def finished_items(self) -> set[str]:
        done: set[str] = set()
        for shard in self.manifest["shards"]:
            done.update(shard.get("empty_items", []))
            done.update(pq.read_table(self.directory / shard["file"], columns=["item"]).column("item").to_pylist())
        return done

    def add(self, item: str, rows: Iterable[dict]) -> None:
        """Record a finished work item with its rows (possibly none)."""
        rows = list(rows)
        for row in rows:
            row["item"] = item
        if rows:
            self._rows.append((item, rows))
            self._pending += len(rows)
        else:
            self._empty.append(item)
        if (self._pending >= self.rows_per_shard
                or time.monotonic() - self._last_flush >= self.seconds_per_shard):
            self.flush()

    def _table(self) -> pa.Table:
        """The pending rows as one table. When they do not fit the schema, each item is checked on its own: a bad
        item's rows become what ``on_bad_rows`` makes of them (or ``BadRows`` is raised), the others are kept."""
        rows = [row for _, item_rows in self._rows for row in item_rows]
        try:
            return pa.Table.from_pylist(rows, schema=self.schema)
        except _CONVERSION_ERRORS:
            pass
        tables = []
        for item, item_rows in self._rows:
            try:
                tables.append(pa.Table.from_pylist(item_rows, schema=self.schema))
            except _CONVERSION_ERRORS as exc:
                reason = f"item {item!r}: its rows do not fit the schema ({str(exc).splitlines()[0][:200]})"
                if self.on_bad_rows is None:
                    raise BadRows(reason) from None
                replacement = [{**row, "item": item} for row in self.on_bad_rows(item, item_rows, reason)]
                tables.append(pa.Table.from_pylist(replacement, schema=self.schema))
        return pa.concat_tables(tables)

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._rows and not self._empty:
            return
        index = len(self.manifest["shards"])
        name = f"shard-{index:05d}.parquet"
        while (self.directory / name).exists():  # never overwrite a listed shard
            index += 1
            name = f"shard-{index:05d}.parquet"
        table = self._table() if self._rows else self.schema.empty_table()
        tmp = self.directory / f".{name}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, self.directory / name)
        self.manifest["shards"].append({"file": name, "rows": table.num_rows, "empty_items": self._empty})
        self.manifest["rows"] += table.num_rows
        _atomic_write_bytes(self.directory / MANIFEST, json.dumps(self.manifest, indent=1).encode())
        self._rows, self._pending, self._empty = [], 0, []

    def close(self) -> None:
        self.flush()
        if not (self.directory / MANIFEST).exists():
            _atomic_write_bytes(self.directory / MANIFEST, json.dumps(self.manifest, indent=1).encode())

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _describe(schema: pa.Schema) -> dict[str, str]:
    return {field.name: str(field.type) for field in schema}


def _check_resumable(directory: Path, manifest: dict, schema: pa.Schema, config: dict | None) -> None:
    """Refuse to resume a dataset made with another schema (an older opencwm) or another configuration."""
    if manifest.get("schema", _describe(schema)) != _describe(schema):
        raise DatasetError(f"{directory} was written with another schema (an older opencwm?): write to another "
                           "directory, or start over with --force")
    made = manifest.get("config")
    if config is not None and made is not None and made != config:
        changed = ", ".join(f"{key} {made.get(key)!r} -> {config.get(key)!r}"
                            for key in sorted({*made, *config}) if made.get(key) != config.get(key))
        raise DatasetError(f"{directory} was made with another configuration ({changed}): write to another "
                           "directory, rerun with the same options to resume, or start over with --force")
