"""Imports point inward: the domain uses the standard library only; the service never touches the store."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pos_engine"
SDK = Path(__file__).resolve().parents[2] / "merchant_sdk"


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_the_domain_imports_only_the_standard_library_and_itself() -> None:
    offenders = {}
    paths = sorted((PACKAGE / "domain").rglob("*.py"))
    assert paths, "no domain modules found: the check would pass without looking"
    for path in paths:
        outside = {
            module
            for module in imported_modules(path)
            if module.split(".")[0] not in sys.stdlib_module_names and not module.startswith("pos_engine.domain")
        }
        if outside:
            offenders[path.name] = outside
    assert offenders == {}


def test_the_use_cases_import_the_domain_and_their_ports_but_no_framework_or_store() -> None:
    forbidden = ("flask", "sqlalchemy", "redis", "marshmallow", "yaml", "pos_engine.store", "pos_engine.api")
    offenders = {}
    paths = sorted((PACKAGE / "service").rglob("*.py"))
    assert paths, "no service modules found: the check would pass without looking"
    for path in paths:
        bad = {module for module in imported_modules(path) if module.startswith(forbidden)}
        if bad:
            offenders[path.name] = bad
    assert offenders == {}


def test_the_merchant_sdk_never_imports_the_engine() -> None:
    paths = sorted(SDK.rglob("*.py"))
    assert paths, "no SDK modules found: the check would pass without looking"
    offenders = {path.name: modules for path in paths if (modules := {m for m in imported_modules(path) if m.startswith("pos_engine")})}
    assert offenders == {}
