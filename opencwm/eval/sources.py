"""Where a benchmark's items come from: a local file in the benchmark's own schema (JSONL, gzipped JSONL, a JSON
list, or Parquet, as the public releases ship them), or the public dataset on the Hugging Face hub through
``datasets`` when it is installed and the hub is reachable. A dataset that cannot be had is one ``MissingDataset``
line saying what to give instead.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path


class MissingDataset(Exception):
    """The benchmark's items cannot be read (no such file, no hub, a file in another schema)."""


@dataclass(frozen=True)
class HubDataset:
    path: str  # e.g. "HuggingFaceH4/MATH-500"
    split: str = "test"
    name: str | None = None  # the dataset's configuration, where it has several


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a local JSONL (``.jsonl``, ``.jsonl.gz``), JSON list (``.json``) or Parquet file."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataset(f"{path}: no such file")
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as handle:
            if path.suffix == ".json":
                rows = json.load(handle)
                return rows if isinstance(rows, list) else rows.get("data", rows.get("rows", []))
            return [json.loads(line) for line in handle if line.strip()]
    except (OSError, ValueError, AttributeError) as exc:
        raise MissingDataset(f"{path}: not a JSONL, JSON list or Parquet file ({type(exc).__name__}: "
                             f"{str(exc)[:120]})") from None


def load_rows(source: str | None, hub: HubDataset | None, benchmark: str) -> list[dict]:
    """Rows from the local file ``source``, else from ``hub`` (``source`` "hf", or none given)."""
    if source and source != "hf":
        return read_rows(source)
    if hub is None:
        raise MissingDataset(f"{benchmark}: give --data PATH (a local file of the benchmark's items)")
    try:
        from datasets import load_dataset
    except ImportError:
        raise MissingDataset(f"{benchmark}: give --data PATH, or pip install 'opencwm[hf]' to read {hub.path} "
                             "from the Hugging Face hub") from None
    try:
        return [dict(row) for row in load_dataset(hub.path, hub.name, split=hub.split)]
    except Exception as exc:  # no network, no hub, a renamed dataset: say which and why
        raise MissingDataset(f"{benchmark}: {hub.path} could not be loaded from the Hugging Face hub "
                             f"({type(exc).__name__}: {str(exc)[:120]}); give --data PATH") from None


def field(row: dict, *names: str):
    """The first of ``names`` the row has (schemas differ in case: ``problem``/``Problem``)."""
    for name in names:
        for key in (name, name.capitalize(), name.upper()):
            if key in row:
                return row[key]
    raise MissingDataset(f"an item has none of the fields {', '.join(names)} (fields: {', '.join(sorted(row))[:200]})")
