"""Layering rules, read from the source with `ast` (nothing is imported):

1. A pure module (DESIGN.md: the cores that run unchanged in a node, a swarm and the
   simulator) never imports I/O, clocks, threads or global randomness: not directly, and not
   through any project module it imports. Imports under `if TYPE_CHECKING:` do not count,
   since they never run.
2. Exactly one module imports libp2p: p2p/libp2p_transport.py.

A failure names the module, the import chain and the line of the offending import.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("p2p", "node", "consensus", "sim_harness")
FORBIDDEN_IN_PURE = frozenset({
    "trio", "time", "os", "socket", "sqlite3", "subprocess", "random", "threading", "asyncio",
    "pathlib", "libp2p",
})
PURE_P2P = ("p2p/codec.py", "p2p/wire.py", "p2p/identity.py", "p2p/announcements.py",
            "p2p/errors.py")
SCANNED_FOR_LIBP2P = ("p2p", "node", "consensus", "sim_harness", "bench", "examples")
LIBP2P_ADAPTER = "p2p/libp2p_transport.py"


@dataclass(frozen=True)
class Import:
    module: str
    """The absolute dotted name imported (relative imports already resolved)."""
    line: int


def pure_modules(root: Path) -> list[str]:
    found = list(PURE_P2P)
    if (root / "node/core.py").exists():
        found.append("node/core.py")
    found += sorted(p.relative_to(root).as_posix() for p in (root / "consensus").rglob("*.py"))
    return found


def _module_name(rel: str) -> str:
    parts = rel.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _ImportCollector(ast.NodeVisitor):
    def __init__(self, rel: str, *, runtime_only: bool) -> None:
        self.rel = rel
        self.package = _module_name(rel) if rel.endswith("__init__.py") else (
            _module_name(rel).rpartition(".")[0])
        self.runtime_only = runtime_only
        self.found: list[Import] = []

    def visit_If(self, node: ast.If) -> None:
        if self.runtime_only and _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [Import(alias.name, node.lineno) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            prefix = ".".join(p for p in base if p)
            module = f"{prefix}.{node.module}" if node.module else prefix
        else:
            module = node.module or ""
        self.found.append(Import(module, node.lineno))
        # `from pkg import name` may import the submodule pkg.name: follow it if it exists.
        self.found += [Import(f"{module}.{alias.name}", node.lineno) for alias in node.names
                       if alias.name != "*"]


def imports_of(root: Path, rel: str, *, runtime_only: bool = True) -> list[Import]:
    tree = ast.parse((root / rel).read_text(encoding="utf-8"), filename=rel)
    collector = _ImportCollector(rel, runtime_only=runtime_only)
    collector.visit(tree)
    return collector.found


def project_files(root: Path, module: str) -> list[str]:
    """The files that run when `module` is imported: each package __init__ on the way, then
    the module itself. Only names that exist in the project (a `from pkg import function`
    names no file)."""
    parts = module.split(".")
    files = []
    for i in range(1, len(parts) + 1):
        stem = "/".join(parts[:i])
        for rel in (f"{stem}/__init__.py", f"{stem}.py"):
            if (root / rel).is_file():
                files.append(rel)
    return files


def forbidden_chains(root: Path, start: str,
                     forbidden: frozenset[str] = FORBIDDEN_IN_PURE) -> list[str]:
    """Every forbidden import reachable from `start`, as 'a.py -> b.py -> trio (b.py:12)'."""
    problems: list[str] = []
    seen: set[str] = set()

    def visit(rel: str, chain: tuple[str, ...]) -> None:
        if rel in seen:
            return
        seen.add(rel)
        for imp in imports_of(root, rel):
            top = imp.module.split(".")[0]
            if top in forbidden:
                problems.append(f"{' -> '.join((*chain, rel))} -> {imp.module} ({rel}:{imp.line})")
            elif top in PROJECT_PACKAGES:
                for target in project_files(root, imp.module):
                    visit(target, (*chain, rel))

    visit(start, ())
    return problems


# ---------------------------------------------------------------------------------------------
# The rules, on this project


def test_the_pure_modules_exist() -> None:
    """A rename must not silently take a module out of the check."""
    missing = [rel for rel in PURE_P2P if not (ROOT / rel).is_file()]
    assert missing == [], f"pure modules missing (update tests/test_layering.py): {missing}"


@pytest.mark.parametrize("module", pure_modules(ROOT))
def test_pure_module_imports_no_io(module: str) -> None:
    problems = forbidden_chains(ROOT, module)
    assert problems == [], (
        f"pure module {module} reaches forbidden imports "
        f"({', '.join(sorted(FORBIDDEN_IN_PURE))}):\n  " + "\n  ".join(problems))


def test_only_the_adapter_imports_libp2p() -> None:
    importers: dict[str, list[int]] = {}
    for folder in SCANNED_FOR_LIBP2P:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            lines = [imp.line for imp in imports_of(ROOT, rel, runtime_only=False)
                     if imp.module.split(".")[0] == "libp2p"]
            if lines:
                importers[rel] = lines
    others = {rel: lines for rel, lines in importers.items() if rel != LIBP2P_ADAPTER}
    assert others == {}, "only p2p/libp2p_transport.py may import libp2p; also: " + ", ".join(
        f"{rel} (line {', '.join(map(str, lines))})" for rel, lines in others.items())
    assert LIBP2P_ADAPTER in importers, f"{LIBP2P_ADAPTER} no longer imports libp2p"


# ---------------------------------------------------------------------------------------------
# The checker itself, on a made-up project


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_checker_follows_chains_packages_and_relative_imports(tmp_path: Path) -> None:
    _write(tmp_path, {
        "p2p/__init__.py": "",
        "p2p/pure.py": "from p2p import helper\nimport hashlib\n",
        "p2p/helper.py": "from .deeper import thing\n",
        "p2p/deeper.py": "def thing():\n    import time\n    return time.time()\n",
        "node/__init__.py": "import socket\n",
        "p2p/uses_node.py": "from node.core import x\n",
        "node/core.py": "x = 1\n",
        "consensus/__init__.py": "",
        "consensus/ok.py": ("from typing import TYPE_CHECKING\n"
                            "if TYPE_CHECKING:\n    import trio\nelse:\n    import os.path\n"),
    })
    assert forbidden_chains(tmp_path, "p2p/pure.py") == [
        "p2p/pure.py -> p2p/helper.py -> p2p/deeper.py -> time (p2p/deeper.py:2)"]
    assert forbidden_chains(tmp_path, "p2p/uses_node.py") == [
        "p2p/uses_node.py -> node/__init__.py -> socket (node/__init__.py:1)"]
    # TYPE_CHECKING imports never run; its else branch does.
    assert forbidden_chains(tmp_path, "consensus/ok.py") == [
        "consensus/ok.py -> os.path (consensus/ok.py:5)"]
    assert [i.module for i in imports_of(tmp_path, "consensus/ok.py", runtime_only=False)] \
        == ["typing", "typing.TYPE_CHECKING", "trio", "os.path"]
