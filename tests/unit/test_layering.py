"""The layers stay where they belong: a core that does no I/O, stores and services that never see
Orthanc, and a shell that is the only code talking to it (DESIGN.md §3, STYLE.md §1).

Every module's imports are read from its source (``ast``: top level and inside functions), so
a late ``import sqlite3`` inside a function of the core fails here too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "plugin" / "orthanc_hardening"
# Outside the core: the shell (Orthanc), stores and services (I/O), the command line.
NOT_CORE = ("shell", "stores", "services", "commands", "cli.py", "__main__.py")
# What the pure core may never import: Orthanc, databases, sockets, processes, threads.
FORBIDDEN_IN_CORE = ("orthanc", "sqlite3", "psycopg", "socket", "ssl", "select", "subprocess", "threading",
                     "multiprocessing", "concurrent", "queue", "ctypes")
OUTER_LAYERS = ("orthanc_hardening.shell", "orthanc_hardening.stores", "orthanc_hardening.services",
                "orthanc_hardening.commands", "orthanc_hardening.cli")


def modules(*, core: bool) -> list[Path]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        is_core = relative.parts[0] not in NOT_CORE
        if is_core == core:
            found.append(path)
    return found


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def reaches(name: str, forbidden: str) -> bool:
    return name == forbidden or name.startswith(forbidden + ".")


def test_the_layers_are_not_empty() -> None:
    assert len(modules(core=True)) > 30 and len(modules(core=False)) > 20


@pytest.mark.parametrize("path", modules(core=True), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_module_does_no_io_and_knows_no_outer_layer(path: Path) -> None:
    bad = sorted(name for name in imports_of(path)
                 if any(reaches(name, f) for f in (*FORBIDDEN_IN_CORE, *OUTER_LAYERS)))
    assert bad == [], f"{path.relative_to(PACKAGE)} imports {bad}"


@pytest.mark.parametrize("path", [p for p in modules(core=False) if p.relative_to(PACKAGE).parts[0] != "shell"],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_shell_talks_to_orthanc(path: Path) -> None:
    bad = sorted(name for name in imports_of(path)
                 if reaches(name, "orthanc") or reaches(name, "orthanc_hardening.shell"))
    assert bad == [], f"{path.relative_to(PACKAGE)} imports {bad}"


def test_nothing_imports_the_orthanc_module_but_the_entry_script() -> None:
    importing = [p for p in PACKAGE.rglob("*.py") if "orthanc" in imports_of(p)]
    assert importing == []
    assert "orthanc" in imports_of(PACKAGE.parent / "hardening.py")
