"""The import graph of ``opencwm/`` has floors: a module imports only its own floor or those below, and no two
modules import each other, directly or around a circle. Every import counts, at module level or inside a function
(a lazy import is still a dependency). The order is declared here, once; README's Layout shows it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "opencwm"

# Lowest first. A module named ``cli`` (an area's command line, beside its code) is on the top floor with the
# recipes; everything else is on its area's floor.
FLOORS = (
    ("errors", "shards", "special_tokens", "sandbox", "ray_cluster"),  # the ground
    ("trace", "chat"),
    ("tokenizer",),
    ("data",),
    ("model",),
    ("train",),
    ("forage",),
    ("infer",),
    ("eval",),  # benchmarks over any completer (infer), SWE episodes in forage's environments
    ("rl",),  # rewards from eval's graders
    ("cli", "speedrun", "speedrun_eval", "speedrun_report", "speedrun_rl"),  # the command line and the recipes
)
FLOOR = {area: number for number, areas in enumerate(FLOORS) for area in areas}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor(module: str) -> int:
    parts = module.split(".")
    if parts[-1] == "cli":
        return len(FLOORS) - 1
    return FLOOR[parts[1]] if len(parts) > 1 else -1  # the package's own __init__ is below everything


def imports() -> dict[str, set[str]]:
    """Each module's imports of other opencwm modules."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for name in names:
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name and name != module and name != "opencwm":
                    found.add(name)
        graph[module] = found
    return graph


def test_every_area_is_on_a_declared_floor():
    areas = {module.split(".")[1] for module in imports() if "." in module}
    assert sorted(area for area in areas if area not in FLOOR) == []


def test_no_import_climbs_the_floors():
    climbing = sorted(f"{module} -> {target}" for module, targets in imports().items() for target in targets
                      if floor(target) > floor(module))
    assert climbing == []


def test_no_import_circles():
    graph = imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []
