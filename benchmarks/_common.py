"""What every benchmark shares: a description of the machine and the row it appends to RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    extra = ""
    try:
        import torch

        extra = f", torch {torch.__version__}"
        if torch.cuda.is_available():
            extra += f", GPU {torch.cuda.get_device_name()}"
    except ImportError:
        pass
    return f"{os.cpu_count()} cores {cpu}, {platform.python_implementation()} {platform.python_version()}{extra}"


def append_row(benchmark: str, command: str, figures: str) -> None:
    row = f"| {datetime.date.today()} | {benchmark} | `{command}` | {machine()} | {figures} |\n"
    with RESULTS.open("a") as handle:
        handle.write(row)
    print(f"row appended to {RESULTS}")
