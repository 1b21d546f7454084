"""A generator of small, deterministic, terminating Python programs with inputs: the embedded default corpus that
makes execution learnable at tiny scale.

Each program defines an entry ``f`` (and, with some probability, helper functions it calls) over integers,
strings, lists and dicts, with loops, branches, helper calls and exceptions (raised and caught, or left to
escape). Code is built from a small typed grammar, so it is always well-typed by construction except where an
exception is the point; loops are bounded, so every program terminates. ``difficulty`` (1-5) scales the number of
statements, loop lengths, nesting and helpers.

    gen = ProgramGenerator(seed=0, difficulty=3)
    program = gen.program()       # Program(source=..., call="f(3, [1, 5], 'ab')", features={...})
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

INT, STR, LIST, DICT = "int", "str", "list", "dict"
LETTERS = "abcdexyz"


@dataclass
class Program:
    source: str
    call: str
    features: dict = field(default_factory=dict)  # loops, helpers, exceptions, statements


class _Scope:
    def __init__(self, rng: random.Random, params: dict[str, str]):
        self.rng = rng
        self.vars: dict[str, str] = dict(params)
        self.counter = 0
        self.protected: set[str] = set()  # while-loop counters: readable, never reassigned (loops must end)

    def of(self, kind: str, writable: bool = False) -> list[str]:
        return [name for name, k in self.vars.items() if k == kind and not (writable and name in self.protected)]

    def pick(self, kind: str, writable: bool = False) -> str | None:
        names = self.of(kind, writable)
        return self.rng.choice(names) if names else None

    def fresh(self, kind: str) -> str:
        prefix = {INT: "n", STR: "s", LIST: "xs", DICT: "d"}[kind]
        self.counter += 1
        name = f"{prefix}{self.counter}"
        self.vars[name] = kind
        return name


class ProgramGenerator:
    def __init__(self, seed: int = 0, difficulty: int = 3):
        if not 1 <= difficulty <= 5:
            raise ValueError("difficulty must be between 1 and 5")
        self.rng = random.Random(seed)
        self.difficulty = difficulty

    # -- values ---------------------------------------------------------------------------------------------------
    def value(self, kind: str) -> object:
        r = self.rng
        if kind == INT:
            return r.randint(-5, 12)
        if kind == STR:
            return "".join(r.choice(LETTERS) for _ in range(r.randint(0, 2 + self.difficulty)))
        if kind == LIST:
            return [r.randint(-3, 9) for _ in range(r.randint(0, 2 + self.difficulty))]
        return {r.choice(LETTERS): r.randint(0, 9) for _ in range(r.randint(0, 1 + self.difficulty))}

    # -- expressions ------------------------------------------------------------------------------------------------
    def int_expr(self, scope: _Scope) -> str:
        r = self.rng
        a = scope.pick(INT) or str(r.randint(0, 9))
        options = [
            lambda: f"{a} {r.choice(['+', '-', '*'])} {scope.pick(INT) or r.randint(1, 5)}",
            lambda: f"{a} // {r.randint(2, 4)}",
            lambda: f"{a} % {r.randint(2, 5)}",
            lambda: f"abs({a})",
            lambda: f"min({a}, {r.randint(0, 9)})",
        ]
        if scope.of(LIST):
            xs = scope.pick(LIST)
            options += [lambda: f"len({xs})", lambda: f"sum({xs})"]
        if scope.of(STR):
            s = scope.pick(STR)
            options += [lambda: f"len({s})", lambda: f"{s}.count({r.choice(LETTERS)!r})"]
        if scope.of(DICT):
            d = scope.pick(DICT)
            options += [lambda: f"{d}.get({r.choice(LETTERS)!r}, {r.randint(0, 3)})", lambda: f"len({d})"]
        return r.choice(options)()

    def str_expr(self, scope: _Scope) -> str:
        r = self.rng
        s = scope.pick(STR) or repr(r.choice(LETTERS))
        options = [
            lambda: f"{s} + {r.choice(LETTERS)!r}",
            lambda: f"{s}.upper()",
            lambda: f"{s}[::-1]",
            lambda: f"{s}[{r.randint(0, 2)}:]",
            lambda: f"{s}.replace({r.choice(LETTERS)!r}, {r.choice(LETTERS)!r})",
        ]
        if scope.of(INT):
            n = scope.pick(INT)
            options.append(lambda: f"{s} + str({n})")
        return r.choice(options)()

    def condition(self, scope: _Scope) -> str:
        r = self.rng
        options = [lambda: f"{self.int_expr(scope)} {r.choice(['<', '>', '==', '!=', '<=', '>='])} {r.randint(0, 6)}"]
        if scope.of(STR):
            s = scope.pick(STR)
            options.append(lambda: f"{r.choice(LETTERS)!r} in {s}")
        if scope.of(LIST):
            xs = scope.pick(LIST)
            options.append(lambda: f"{r.randint(0, 5)} in {xs}")
        return r.choice(options)()

    # -- statements -------------------------------------------------------------------------------------------------
    def statements(self, scope: _Scope, count: int, depth: int, helpers: list[tuple[str, list[str], str]],
                   features: dict) -> list[str]:
        lines: list[str] = []
        for _ in range(count):
            lines += self.statement(scope, depth, helpers, features)
        return lines

    def block(self, scope: _Scope, count: int, depth: int, helpers, features: dict) -> list[str]:
        """A nested body: names it binds may stay unbound (a loop that never runs, a branch not taken), so they
        are not used after it."""
        visible = dict(scope.vars)
        lines = self.statements(scope, count, depth, helpers, features)
        scope.vars = visible
        return lines

    def statement(self, scope: _Scope, depth: int, helpers, features: dict) -> list[str]:
        r = self.rng
        kinds = ["int", "int", "str", "list", "dict"]
        if depth < 1 + self.difficulty // 2:
            kinds += ["for", "if", "while"]
        if helpers:
            kinds += ["call", "call"]
        if self.difficulty >= 2:
            kinds.append("try")
        kind = r.choice(kinds)
        if kind in ("int", "str"):  # the expression first: it may only read names bound before
            expression = self.int_expr(scope) if kind == "int" else self.str_expr(scope)
            target = scope.pick(kind, True) if scope.of(kind, True) and r.random() < 0.5 else scope.fresh(kind)
            return [f"{target} = {expression}"]
        if kind == "list":
            xs = scope.pick(LIST)
            if xs is None:
                return [f"{scope.fresh(LIST)} = {self.value(LIST)!r}"]
            return [r.choice([f"{xs}.append({self.int_expr(scope)})", f"{xs}.sort()", f"{xs} = {xs}[1:]",
                              f"{xs}.insert(0, {r.randint(0, 9)})"])]
        if kind == "dict":
            d = scope.pick(DICT)
            if d is None:
                return [f"{scope.fresh(DICT)} = {self.value(DICT)!r}"]
            key = scope.pick(STR) if scope.of(STR) and r.random() < 0.3 else repr(r.choice(LETTERS))
            return [f"{d}[{key}] = {d}.get({key}, 0) + {self.int_expr(scope)}"]
        if kind == "for":
            features["loops"] = True
            body_count = r.randint(1, 1 + self.difficulty // 2)
            if scope.of(LIST) and r.random() < 0.5:
                xs = scope.pick(LIST)
                visible = dict(scope.vars)
                item = scope.fresh(INT)
                body = self.block(scope, body_count, depth + 1, helpers, features)
                scope.vars = visible
                return [f"for {item} in {xs}[:{2 + self.difficulty}]:", *_indent(body)]
            visible = dict(scope.vars)
            item = scope.fresh(INT)
            body = self.block(scope, body_count, depth + 1, helpers, features)
            scope.vars = visible
            return [f"for {item} in range({r.randint(1, 2 + self.difficulty)}):", *_indent(body)]
        if kind == "while":
            features["loops"] = True
            counter = scope.fresh(INT)
            scope.protected.add(counter)
            body = self.block(scope, r.randint(1, 2), depth + 1, helpers, features)
            return [f"{counter} = 0", f"while {counter} < {r.randint(1, 1 + self.difficulty)}:",
                    *_indent([*body, f"{counter} += 1"])]
        if kind == "if":
            features["branches"] = True
            condition = self.condition(scope)
            then = self.block(scope, r.randint(1, 2), depth + 1, helpers, features)
            lines = [f"if {condition}:", *_indent(then)]
            if r.random() < 0.6:
                lines += ["else:", *_indent(self.block(scope, r.randint(1, 2), depth + 1, helpers, features))]
            return lines
        if kind == "call":
            features["helper_calls"] = True
            name, params, result = r.choice(helpers)
            args = []
            for kind_ in params:
                args.append(scope.pick(kind_) or repr(self.value(kind_)))
            target = scope.fresh(result)
            return [f"{target} = {name}({', '.join(args)})"]
        # try/except: an operation that may raise, and its handler
        features["exceptions"] = True
        n = scope.pick(INT) or str(r.randint(0, 3))
        risky = r.choice([
            f"{r.randint(1, 9)} // ({n} % {r.randint(2, 4)})",
            f"int({scope.pick(STR) or repr('7')})",
            f"[{n}][{r.randint(0, 1)}]",
        ])
        target = scope.fresh(INT)
        exc = {"//": "ZeroDivisionError", "int(": "ValueError"}.get(next((k for k in ("//", "int(") if k in risky), ""),
                                                                      "IndexError")
        return ["try:", f"    {target} = {risky}", f"except {exc}:", f"    {target} = {r.randint(-1, 1)}"]

    # -- functions --------------------------------------------------------------------------------------------------
    def function(self, name: str, params: dict[str, str], result: str, helpers, features: dict,
                 count: int) -> list[str]:
        scope = _Scope(self.rng, params)
        body = self.statements(scope, count, 0, helpers, features)
        candidates = scope.of(result)
        if candidates:
            ret = self.rng.choice(candidates)
        else:
            ret = {INT: self.int_expr, STR: self.str_expr}.get(result, lambda s: repr(self.value(result)))(scope)
        if self.difficulty >= 3 and self.rng.random() < 0.15:  # sometimes the exception escapes
            features["uncaught"] = True
            body.append(f"assert len({scope.pick(LIST) or '[1]'}) < {self.rng.randint(2, 6)}, 'too long'")
        header = f"def {name}({', '.join(params)}):"
        return [header, *_indent([*body, f"return {ret}"])]

    def program(self) -> Program:
        r = self.rng
        features: dict = {}
        helpers: list[tuple[str, list[str], str]] = []
        lines: list[str] = []
        for h in range(r.randint(0, (self.difficulty + 1) // 2)):
            params = {f"a{i}": r.choice([INT, STR, LIST]) for i in range(r.randint(1, 2))}
            result = r.choice([INT, STR])
            name = f"helper{h}" if h else "helper"
            lines += self.function(name, params, result, list(helpers), features, r.randint(1, 2 + self.difficulty))
            lines.append("")
            helpers.append((name, list(params.values()), result))
        params = {name: r.choice([INT, STR, LIST, DICT]) for name in ("x", "y", "z")[: r.randint(1, 3)]}
        lines += self.function("f", params, r.choice([INT, STR, LIST]), helpers, features,
                               r.randint(2 + self.difficulty, 3 + 2 * self.difficulty))
        arguments = ", ".join(repr(self.value(kind)) for kind in params.values())
        features["statements"] = sum(1 for line in lines if line.strip() and not line.startswith("def "))
        return Program("\n".join(lines) + "\n", f"f({arguments})", features)


def _indent(lines: list[str]) -> list[str]:
    return ["    " + line for line in lines]
