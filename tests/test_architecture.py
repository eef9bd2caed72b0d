"""The layer picture of docs/architecture.md, enforced: imports only run down.

Each top-level part of the package has a rank; a module may import its own
part or a part of strictly lower rank, never one above (that is how a core
change stays away from the CLI, and how torch stays out of the core verbs).
"""

from __future__ import annotations

import ast
from pathlib import Path

import mtpforge

PACKAGE = Path(mtpforge.__file__).parent

# Core, then operations, then publishing, then the front.
RANKS = {
    "errors": 0, "units": 1,
    "formats": 2, "prompts": 2,
    "checkpoint": 3, "families": 3,
    "testing": 4,
    "diagnosis": 5,
    "surgery": 6,
    "reference": 7,
    "quant": 8, "engine": 8,
    "verify": 9, "bench": 9,
    "heal": 10,
    "publish": 11,
    "cli": 12,
}
TOP_LEVEL_MODULES = {"__init__", "__main__", "errors", "units", "prompts"}  # everything else lives in a package


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "mtpforge" and len(parts) > 1 else None


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "models" not in p.relative_to(PACKAGE).parts)


def test_every_part_has_a_rank() -> None:
    parts = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in _modules()}
    assert parts - set(RANKS) - {"__init__", "__main__"} == set()


def test_no_import_runs_back_up() -> None:
    upward = []
    for path in _modules():
        rel = path.relative_to(PACKAGE)
        own = rel.parts[0].removesuffix(".py")
        if own in ("__init__", "__main__"):
            continue
        for line, module in _imports(path):
            target = _part(module)
            if target is None or target == own or target == "__init__":
                continue
            if RANKS[target] >= RANKS[own]:
                upward.append(f"{rel}:{line} imports {module} ({own} rank {RANKS[own]} -> {target} rank {RANKS[target]})")
    assert upward == []


def test_no_loose_verb_modules() -> None:
    loose = {p.stem for p in PACKAGE.glob("*.py")} - TOP_LEVEL_MODULES
    assert loose == set()
