"""Bounded, deterministic rendering of Python values for traces.

A value is rendered as its exact ``repr()`` so that it can be compared with what real Python computes, with three
exceptions, each visible in the text:

- memory addresses (``<Foo object at 0x7f3a...>``) are renumbered in order of first appearance within a trace
  (``0x1``, ``0x2``, ...), so traces are deterministic and still show which objects are the same;
- a rendering longer than ``max_chars`` is cut and ends with ``...<+N chars>``; huge builtin containers and strings
  are cut before their full repr is built, so rendering stays cheap;
- a ``__repr__`` that raises (including unbounded recursion) renders as ``<unrepresentable TYPE: EXC>``.
"""

from __future__ import annotations

import ast
import itertools
import marshal
import re
import warnings

DEFAULT_MAX_CHARS = 1000

# An address as default reprs show it: "<Foo object at 0x7f3a1c2b5e10>", "<function f at 0x...>".
_ADDRESS = re.compile(r"(?<= at )0x[0-9a-fA-F]{4,}(?=>)")
_CUT_SEQUENCE = re.compile(r"\.\.\.<\+(\d+) items>[\])]\Z")  # the end of a cut list's or tuple's rendering
# Containers whose rendering ``fingerprint`` can prove unchanged.
_PROVABLE = frozenset({list, tuple, dict, set, frozenset})
_SIMPLE = frozenset({int, float, bool, type(None)})  # types whose repr is short, safe and address-free
_BIG_INT = 10**300  # larger ints take the guarded path (their repr can be slow or refused)
# Values whose rendering cannot change while the same object is bound: a cache hit on identity is exact.
IMMUTABLE_ATOMS = frozenset({int, float, complex, bool, str, bytes, type(None), range})
_SEQUENCES = {list: ("[", "]"), tuple: ("(", ")"), set: ("{", "}"), frozenset: ("frozenset({", "})")}


def truncation_marker(hidden_chars: int) -> str:
    return f"...<+{hidden_chars} chars>"


class Renderer:
    """Renders values for one trace (address numbering is per trace)."""

    __slots__ = ("_addresses", "max_chars")

    def __init__(self, max_chars: int = DEFAULT_MAX_CHARS):
        self.max_chars = max_chars
        self._addresses: dict[str, str] = {}

    def render(self, value: object) -> str:
        kind = type(value)
        if kind in _SIMPLE and (kind is not int or -_BIG_INT < value < _BIG_INT):
            text = repr(value)
            if len(text) <= self.max_chars:
                return text
        hidden = 0  # characters known to be left out before the repr was built
        try:
            if kind in (str, bytes, bytearray) and len(value) > 2 * self.max_chars:
                hidden = len(value) - 2 * self.max_chars
                value = value[: 2 * self.max_chars]
            text = self._bounded_repr(value)
        except Exception as exc:  # any failure of user code becomes a placeholder
            text = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
        if kind is not str and " at 0x" in text:
            text = _ADDRESS.sub(self._renumber, text)
        if len(text) > self.max_chars or hidden:
            text = text[: self.max_chars] + truncation_marker(len(text) - self.max_chars + hidden)
        return text

    def fingerprint(self, value: object, text: str | None = None):
        """A cheap proof of everything ``render(value)`` depends on, for a builtin container, else None.

        While ``unchanged(value, proof)`` holds, ``render(value)`` gives the same text, so a tracer can skip
        rendering a mutable container that was not modified. The proof is ``marshal``'s serialisation, which
        writes the exact type and value of every item (it refuses subclasses and arbitrary objects, whose reprs
        are user code): equal bytes mean equal values of equal types, hence equal reprs. A long list or tuple's
        rendering depends only on its length and on the items that fit the budget, so only those are
        serialised; given the rendering ``text`` of a cut one, only the items it shows and the first one left out
        (whose length decided the cut)."""
        kind = type(value)
        if kind not in _PROVABLE:
            return None
        count, keep = len(value), None
        if count > self.max_chars // (4 if kind is dict else 3):  # rendered cut
            if kind is not list and kind is not tuple:
                return None
            shown = _CUT_SEQUENCE.search(text) if text is not None else None
            keep = min(count - int(shown.group(1)) + 1 if shown else count, self.max_chars // 3)
        try:
            return kind, count, keep, marshal.dumps(value if keep is None else value[:keep], 2)
        except ValueError:  # an item marshal refuses, or nesting too deep
            return None

    @staticmethod
    def unchanged(value: object, proof: tuple) -> bool:
        kind, count, keep, data = proof
        if type(value) is not kind or len(value) != count:
            return False
        try:
            return marshal.dumps(value if keep is None else value[:keep], 2) == data
        except ValueError:
            return False

    def _renumber(self, match: re.Match) -> str:
        address = match.group(0)
        if address not in self._addresses:
            self._addresses[address] = f"0x{len(self._addresses) + 1}"
        return self._addresses[address]

    def _bounded_repr(self, value: object) -> str:
        kind = type(value)
        limit = self.max_chars
        if kind is dict and len(value) > limit // 4:
            head = list(itertools.islice(value.items(), limit // 4))
            if set(map(type, dict(head))) <= _SIMPLE and set(map(type, dict(head).values())) <= _SIMPLE:
                return self._cut_simple("{", "}", repr(dict(head))[1:-1], len(value))
            items = (f"{self._bounded_repr(k)}: {self._bounded_repr(v)}" for k, v in value.items())
            return self._cut_items("{", "}", items, len(value))
        if kind in _SEQUENCES and len(value) > limit // 3:
            opening, closing = _SEQUENCES[kind]
            if kind in (list, tuple):
                # Guess how many items fill the budget from the first one; take them all if the guess falls short.
                guess = limit // (len(repr(value[0])) + 2) + 8
                for count in (guess, limit // 3) if guess < limit // 3 else (limit // 3,):
                    head = value[:count]
                    if not set(map(type, head)) <= _SIMPLE:
                        break
                    inner = repr(list(head))[1:-1]  # C-speed repr of a bounded slice
                    if len(inner) >= limit or count == limit // 3:
                        return self._cut_simple(opening, closing, inner, len(value))
            return self._cut_items(opening, closing, (self._bounded_repr(v) for v in value), len(value))
        return repr(value)

    def _cut_simple(self, opening: str, closing: str, inner: str, count: int) -> str:
        """Cut the comma-separated reprs of simple values (which contain no ", " themselves) to the budget."""
        budget = self.max_chars - len(opening) - len(closing) - 24  # room for the marker
        if len(inner) > budget:
            cut = inner.rfind(", ", 0, budget)  # the last whole item with its separator within budget
            inner = inner[:cut] if cut > 0 else ""
        shown = inner.count(", ") + 1 if inner else 0
        parts = f"{inner}, " if inner else ""
        return f"{opening}{parts}...<+{count - shown} items>{closing}"

    def _cut_items(self, opening: str, closing: str, items, count: int) -> str:
        """Render items while they fit the budget and mark the rest (a container this long cannot fit anyway,
        since each item takes at least three characters with its separator)."""
        parts, used = [], len(opening) + len(closing) + 24  # room for the marker
        for text in items:
            used += len(text) + 2
            if used > self.max_chars:
                break
            parts.append(text)
        inner = f"{', '.join(parts)}, " if parts else ""
        return f"{opening}{inner}...<+{count - len(parts)} items>{closing}"


def same_value(predicted: str | None, expected: str | None) -> bool:
    """Compare two reprs by value when both are literals, else as text."""
    if predicted is None or expected is None:
        return False
    try:
        with warnings.catch_warnings():  # model output may hold odd literals; only the comparison matters
            warnings.simplefilter("ignore")
            return ast.literal_eval(predicted) == ast.literal_eval(expected)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return predicted.strip() == expected.strip()
