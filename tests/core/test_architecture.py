"""The import rules of docs/ARCHITECTURE.md, checked on the source tree.

The rules are read from the code's import statements (every ``import`` and ``from ... import``,
including the lazy ones inside functions), so a new room that breaks a rule fails here, and
ARCHITECTURE.md is checked to name every module that exists (and none that does not).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: The first-party trees whose imports are checked (tests/ are exempt: they test units).
CHECKED = ("audit_core", "airflow_audit", "prefect_audit", "bench", "testkit", "scripts")
CHECKED_FILES = ("example_dags", "example_flows")
FIRST_PARTY = ("audit_core", "airflow_audit", "prefect_audit", "testkit", "bench", "tests")

#: Pure units: no I/O of their own, importing only each other (R4).
PURE = frozenset(
    {
        "audit_core._jcs",
        "audit_core._merkle",
        "audit_core._note",
        "audit_core._record",
        "audit_core._chain",
        "audit_core._normalize",
        "audit_core._trace",
        "audit_core._metrics",
        "audit_core._segment",
        "audit_core._forklock",
        "audit_core._cosign",
        "audit_core._witness_wire",
        "audit_core.errors",
    }
)


@dataclass(frozen=True)
class Import:
    """One imported module (and, for ``from M import n``, the name ``n``) in ``module``."""

    module: str  # the importer, dotted
    target: str  # the imported module, dotted
    name: str | None  # the name of ``from target import name``
    line: int

    def __str__(self) -> str:
        what = self.target if self.name is None else f"{self.target}.{self.name}"
        return f"{self.module}:{self.line} imports {what}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, *, is_package: bool = False) -> Iterator[Import]:
    """Every import in ``source``, relative ones resolved against ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, None, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield Import(module, base, alias.name, node.lineno)


def source_files() -> Iterator[Path]:
    for top in CHECKED:
        yield from sorted((ROOT / top).rglob("*.py"))
    for top in CHECKED_FILES:
        yield from sorted((ROOT / top).rglob("*.py"))


def all_imports() -> list[Import]:
    found: list[Import] = []
    for path in source_files():
        found.extend(
            imports_of(
                path.read_text(encoding="utf-8"),
                module_name(path),
                is_package=path.name == "__init__.py",
            )
        )
    return found


def is_private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def first_party(target: str) -> bool:
    return target.split(".")[0] in FIRST_PARTY


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def private_name_violations(found: list[Import]) -> list[str]:
    """R1: an underscore name is private to its module."""
    return [
        str(i)
        for i in found
        if i.name is not None
        and is_private(i.name)
        and first_party(i.target)
        # ``from pkg import _mod`` inside pkg names a private module, which R2 governs
        and not (within(i.module, i.target) and _is_module(f"{i.target}.{i.name}"))
    ]


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def private_module_violations(found: list[Import]) -> list[str]:
    """R2: ``pkg._mod`` is private to ``pkg``."""
    out = []
    for i in found:
        dotted = i.target
        if i.name is not None and _is_module(f"{i.target}.{i.name}"):
            dotted = f"{i.target}.{i.name}"  # ``from pkg import _mod`` names a module
        if not first_party(dotted):
            continue
        parts = dotted.split(".")
        for n, part in enumerate(parts):
            if is_private(part):
                if not within(i.module, ".".join(parts[:n])):
                    out.append(str(i))
                break
    return out


def forbidden(found: list[Import], importers: str, targets: tuple[str, ...]) -> list[str]:
    """Imports by modules under ``importers`` of modules under any of ``targets``."""
    out = []
    for i in found:
        if not within(i.module, importers):
            continue
        dotted = i.target if i.name is None else f"{i.target}.{i.name}"
        if any(within(dotted, t) or within(i.target, t) for t in targets):
            out.append(str(i))
    return out


@pytest.fixture(scope="module")
def found() -> list[Import]:
    return all_imports()


class TestChecker:
    """The rule checker itself finds what it should (so a silent pass means something)."""

    def test_private_name_found(self) -> None:
        """``from audit_core._parallel import _combine`` outside the module is flagged."""
        imports = list(
            imports_of("from audit_core._parallel import _combine\n", "audit_core.bucket")
        )
        assert ["audit_core.bucket:1 imports audit_core._parallel._combine"] == (
            private_name_violations(imports)
        )

    def test_private_module_outside_package_found(self) -> None:
        """An adapter importing ``audit_core._trace`` is flagged; the core importing it is not."""
        outside = list(imports_of("from audit_core._trace import x\n", "airflow_audit.adapter"))
        inside = list(imports_of("from audit_core._trace import x\n", "audit_core.trail"))
        assert 1 == len(private_module_violations(outside))
        assert [] == private_module_violations(inside)

    def test_lazy_import_found(self) -> None:
        """An import inside a function counts as much as one at the top."""
        source = "def f():\n    import airflow.models\n"
        imports = list(imports_of(source, "audit_core.cli"))
        assert 1 == len(forbidden(imports, "audit_core", ("airflow",)))

    def test_relative_import_resolved(self) -> None:
        """``from ._x import _y`` in a package resolves to the package's module."""
        imports = list(imports_of("from ._x import _y\n", "audit_core.sinks", is_package=True))
        assert "audit_core.sinks._x" == imports[0].target


class TestImportRules:
    """docs/ARCHITECTURE.md's rules hold for every first-party module outside tests/."""

    def test_r1_no_private_names_across_modules(self, found: list[Import]) -> None:
        """R1: no module imports another module's underscore name."""
        assert [] == private_name_violations(found)

    def test_r2_private_modules_stay_in_their_package(self, found: list[Import]) -> None:
        """R2: ``pkg._mod`` is imported only from inside ``pkg``."""
        assert [] == private_module_violations(found)

    def test_r3_core_knows_no_orchestrator(self, found: list[Import]) -> None:
        """R3: audit_core imports neither Airflow nor Prefect nor their adapters."""
        orchestrators = ("airflow", "prefect", "airflow_audit", "prefect_audit")
        assert [] == forbidden(found, "audit_core", orchestrators)

    def test_r4_pure_units_import_only_pure_units(self, found: list[Import]) -> None:
        """R4: the pure units import no other part of audit_core."""
        out = []
        for i in found:
            dotted = i.target if i.name is None else f"{i.target}.{i.name}"
            inside = i.module in PURE and within(i.target, "audit_core")
            if inside and i.target not in PURE | {"audit_core"} and dotted not in PURE:
                out.append(str(i))
        assert [] == out

    def test_r5_ledgers_below_sinks_and_trail(self, found: list[Import]) -> None:
        """R5: ledgers import no sinks, trail, adapter kit, shipping or CLI."""
        upper = ("audit_core.sinks", "audit_core.trail", "audit_core.hooks", "audit_core.cli")
        assert [] == forbidden(found, "audit_core.ledgers", (*upper, "audit_core.ship"))

    def test_r5_sinks_below_trail(self, found: list[Import]) -> None:
        """R5: sinks import no trail, adapter kit or CLI."""
        upper = ("audit_core.trail", "audit_core.hooks", "audit_core.cli")
        assert [] == forbidden(found, "audit_core.sinks", upper)

    def test_r5_adapter_kit_knows_no_delivery(self, found: list[Import]) -> None:
        """R5: the adapter kit and its flusher import no sinks and no shipper."""
        delivery = ("audit_core.sinks", "audit_core.ship", "audit_core.cli")
        out = forbidden(found, "audit_core.hooks", delivery)
        out += forbidden(found, "audit_core.flush", delivery)
        assert [] == out

    def test_r5_only_the_cli_imports_the_cli(self, found: list[Import]) -> None:
        """R5: nothing outside audit_core.cli imports it (it is the top of the core)."""
        out = [
            str(i)
            for i in found
            if not within(i.module, "audit_core.cli")
            and (within(i.target, "audit_core.cli") or f"{i.target}.{i.name}" == "audit_core.cli")
        ]
        assert [] == out

    def test_r6_bench_and_testkit_import_no_tests(self, found: list[Import]) -> None:
        """R6: benchmarks and the shared test servers never import test code."""
        assert [] == forbidden(found, "bench", ("tests",)) + forbidden(found, "testkit", ("tests",))


#: A module named in ARCHITECTURE.md: a path under one of the packages, in backquotes.
_NAMED = re.compile(r"`((?:audit_core|airflow_audit|prefect_audit|testkit)/[a-z0-9_/]*(?:\.py)?)`")


class TestArchitectureDocument:
    """docs/ARCHITECTURE.md names every module there is, and none that is not."""

    def test_every_module_is_named(self) -> None:
        """Each package and module of the three packages appears in the document."""
        text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
        named = {n.rstrip("/") for n in _NAMED.findall(text)}
        missing = []
        for top in ("audit_core", "airflow_audit", "prefect_audit", "testkit"):
            for path in sorted((ROOT / top).rglob("*.py")):
                rel = path.relative_to(ROOT)
                if path.name == "__init__.py":
                    if str(rel.parent) not in named:
                        missing.append(f"{rel.parent}/")
                elif str(rel) not in named:
                    missing.append(str(rel))
        assert [] == missing

    def test_no_named_module_is_missing(self) -> None:
        """Every module the document names exists (a rename updates the document)."""
        text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
        planned = (
            "audit_core/sources",
            "audit_core/web",
            "airflow_audit/ui",
            "audit_core/evidence",
            "audit_core/privacy",
        )
        gone = [
            n
            for n in _NAMED.findall(text)
            if not (ROOT / n).exists() and not n.rstrip("/").startswith(planned)
        ]
        assert [] == gone
