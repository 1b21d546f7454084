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

import re

DEFAULT_MAX_CHARS = 1000

_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{4,}\b")
# Values whose rendering cannot change while the same object is bound: a cache hit on identity is exact.
IMMUTABLE_ATOMS = frozenset({int, float, complex, bool, str, bytes, type(None), range})
_SEQUENCES = {list: ("[", "]"), tuple: ("(", ")"), set: ("{", "}"), frozenset: ("frozenset({", "})")}


def truncation_marker(hidden_chars: int) -> str:
    return f"...<+{hidden_chars} chars>"


class Renderer:
    """Renders values for one trace (address numbering is per trace)."""

    def __init__(self, max_chars: int = DEFAULT_MAX_CHARS):
        self.max_chars = max_chars
        self._addresses: dict[str, str] = {}

    def render(self, value: object) -> str:
        hidden = 0  # characters known to be left out before the repr was built
        try:
            kind = type(value)
            if kind in (str, bytes, bytearray) and len(value) > 2 * self.max_chars:
                hidden = len(value) - 2 * self.max_chars
                value = value[: 2 * self.max_chars]
            text = self._bounded_repr(value)
        except Exception as exc:  # any failure of user code becomes a placeholder
            text = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
        if "0x" in text:
            text = _ADDRESS.sub(self._renumber, text)
        if len(text) > self.max_chars or hidden:
            text = text[: self.max_chars] + truncation_marker(len(text) - self.max_chars + hidden)
        return text

    def _renumber(self, match: re.Match) -> str:
        address = match.group(0)
        if address not in self._addresses:
            self._addresses[address] = f"0x{len(self._addresses) + 1}"
        return self._addresses[address]

    def _bounded_repr(self, value: object) -> str:
        kind = type(value)
        limit = self.max_chars
        if kind is dict and len(value) > limit // 4:
            return self._cut_items(
                "{", "}", (f"{self._bounded_repr(k)}: {self._bounded_repr(v)}" for k, v in value.items()), len(value)
            )
        if kind in _SEQUENCES and len(value) > limit // 3:
            opening, closing = _SEQUENCES[kind]
            return self._cut_items(opening, closing, (self._bounded_repr(v) for v in value), len(value))
        return repr(value)

    def _cut_items(self, opening: str, closing: str, items, count: int) -> str:
        """Render items while they fit the budget and mark the rest (a container this long cannot fit anyway,
        since each item takes at least three characters with its separator)."""
        parts, used = [], len(opening) + len(closing) + 24  # room for the marker
        for text in items:
            used += len(text) + 2
            if used > self.max_chars:
                break
            parts.append(text)
        return f"{opening}{', '.join(parts)}, ...<+{count - len(parts)} items>{closing}"
