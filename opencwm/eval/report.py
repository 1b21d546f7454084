"""``opencwm eval report``: one report card over eval runs: for each run (a model on a benchmark in one
setting) its pass@k with a 95% confidence interval, the runs side by side per benchmark, and CWM's reported
figures beside them for reference. Written as markdown, JSON and a plot.
"""

from __future__ import annotations

import json
from pathlib import Path

from opencwm.eval.harness import SUMMARY


def is_metric(key: str) -> bool:
    """A summary's figures: pass@k, and tts@K for SWE with test-time scaling."""
    return key.startswith(("pass@", "tts@")) and not key.endswith("_interval")


class ReportError(Exception):
    """Nothing to report on: no run directory among the paths given."""


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories (holding a summary) among ``paths`` and their immediate subfolders, in order."""
    runs: list[Path] = []
    for path in paths:
        if (path / SUMMARY).is_file():
            runs.append(path)
        elif path.is_dir():
            runs.extend(sorted(child for child in path.iterdir() if (child / SUMMARY).is_file()))
        else:
            raise ReportError(f"{path}: no such directory")
    if not runs:
        raise ReportError(f"no eval runs (folders with {SUMMARY}) in {', '.join(map(str, paths))}")
    return runs


def _entry(run: Path) -> dict:
    try:
        summary = json.loads((run / SUMMARY).read_text())
        settings = summary["settings"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReportError(f"{run / SUMMARY}: not an eval summary ({type(exc).__name__})") from None
    metrics = {key: {"value": value, "interval": summary.get(f"{key}_interval")}
               for key, value in summary.items() if is_metric(key)}
    return {"run": str(run), "benchmark": summary["benchmark"], "model": summary["model"],
            "style": settings.get("style", ""), "items": summary["items"], "samples": summary.get("samples"),
            "temperature": settings.get("temperature"), "metrics": metrics, "reported": summary.get("reported", {})}


def _cell(metric: dict | None) -> str:
    if metric is None or metric["value"] is None:
        return "–"
    low_high = metric["interval"]
    spread = f" [{100 * low_high[0]:.1f}, {100 * low_high[1]:.1f}]" if low_high else ""
    return f"{100 * metric['value']:.1f}{spread}"


def markdown(entries: list[dict]) -> str:
    """A table per benchmark: a row per run, a column per metric, CWM's reported figures as the last row."""
    out = ["# Report card", "", "pass@k in %, with a 95% confidence interval over items (normal approximation).", ""]
    for benchmark in dict.fromkeys(e["benchmark"] for e in entries):
        rows = [e for e in entries if e["benchmark"] == benchmark]
        metrics = list(dict.fromkeys(m for e in rows for m in e["metrics"]))
        out += [f"## {benchmark}", "", "| run | model | style | items × samples | temperature | "
                + " | ".join(metrics) + " |", "|---" * (5 + len(metrics)) + "|"]
        for e in rows:
            out.append(f"| {Path(e['run']).name} | {e['model']} | {e['style']} | {e['items']} × {e['samples']} | "
                       f"{e['temperature']} | " + " | ".join(_cell(e["metrics"].get(m)) for m in metrics) + " |")
        reported = rows[0]["reported"]
        if reported:
            out.append("| CWM (reported) | facebook/cwm | | | | "
                       + " | ".join(f"{reported[m]:.1f}" if m in reported else "–" for m in metrics) + " |")
        out.append("")
    return "\n".join(out)


def plot(entries: list[dict], path: Path) -> None:
    """pass@1 of every run with its interval as an error bar, CWM's reported figure as a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [e for e in entries if e["metrics"].get("pass@1", {}).get("value") is not None]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(shown) + 2), 4))
    labelled = False
    for index, e in enumerate(shown):
        metric = e["metrics"]["pass@1"]
        low, high = metric["interval"] or (metric["value"], metric["value"])
        ax.bar(index, 100 * metric["value"], yerr=[[100 * (metric["value"] - low)], [100 * (high - metric["value"])]],
               capsize=4, color="tab:blue")
        if "pass@1" in e["reported"]:
            ax.plot(index, e["reported"]["pass@1"], marker="_", markersize=24, color="tab:red",
                    label=None if labelled else "CWM reported")
            labelled = True
    ax.set_xticks(range(len(shown)), [f"{e['benchmark']}\n{Path(e['run']).name}" for e in shown], fontsize=8)
    ax.set_ylabel("pass@1 (%)")
    ax.set_ylim(0, 100)
    if labelled:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(paths: list[Path], out: Path | None = None) -> str:
    """The report card's markdown; with ``out``, also ``report.md``, ``report.json`` and ``report.png`` there."""
    entries = [_entry(run) for run in find_runs(paths)]
    card = markdown(entries)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(card + "\n")
        (out / "report.json").write_text(json.dumps(entries, indent=1) + "\n")
        plot(entries, out / "report.png")
    return card
