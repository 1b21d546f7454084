"""Decontamination: which of a benchmark's items a training corpus already holds.

An item's own text (CruxEval's function, HumanEval's prompt, a problem's statement; never the prompt template
around it) is cut into word n-grams (13 by default, as GPT-3's report did; an item of fewer words is one gram of
all its words), and every training text of the corpora (code, traces or trajectories, in the form the model
trains on) is scanned for them. An item is flagged when any of its n-grams occurs; its overlap is the share of its
n-grams found.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from opencwm.eval.harness import Problem

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def grams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


@dataclass
class Finding:
    id: str
    grams: int  # the item's distinct n-grams
    found: set = field(default_factory=set)  # those the corpora hold
    documents: list[int] = field(default_factory=list)  # the first corpus texts holding one

    @property
    def overlap(self) -> float:
        return len(self.found) / self.grams if self.grams else 0.0

    def as_json(self) -> dict:
        return {"id": self.id, "contaminated": bool(self.found), "overlap": round(self.overlap, 4),
                "documents": self.documents}


def check(problems: list[Problem], texts: Iterable[str], n: int = 13, keep_documents: int = 5) -> list[Finding]:
    """For each item (its ``reference["text"]``), the corpus texts that share an n-gram with it."""
    index: dict[tuple[str, ...], list[int]] = {}
    findings = []
    for number, problem in enumerate(problems):
        item_grams = grams(words(problem.reference.get("text", "")), n)
        findings.append(Finding(problem.id, len(item_grams)))
        for gram in item_grams:
            index.setdefault(gram, []).append(number)
    lengths = sorted({len(gram) for gram in index})
    for document, text in enumerate(texts):
        tokens = words(text)
        for length in lengths:
            for gram in grams(tokens, length) if len(tokens) >= length else ():
                for number in index.get(gram, ()):
                    finding = findings[number]
                    finding.found.add(gram)
                    if len(finding.documents) < keep_documents and document not in finding.documents:
                        finding.documents.append(document)
    return findings
