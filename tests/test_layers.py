"""The package's shape as a contract: no import cycle, the import-linter layers, a torch-free service."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

from support import child_env

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "training" / "chexops"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def module_graph(package: Path) -> dict[str, set[str]]:
    """Each module of the package → the package's modules it imports, imports inside functions included
    (`if TYPE_CHECKING:` blocks are not imports at run time and are left out)."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skipped = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
            for n in ast.walk(node)
        }
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            deps.update(m for t in targets if (m := owner(t)) and m != name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_the_packages_modules():
    graph = module_graph(PACKAGE)
    assert len(graph) > 50 and graph["chexops.cli"], "the graph reader found the package"
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle_through_a_function_level_import(tmp_path):
    package = tmp_path / "chexops"
    (package / "a").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a" / "__init__.py").write_text("")
    (package / "a" / "one.py").write_text("from chexops.a import two\n")
    (package / "a" / "two.py").write_text("def f():\n    from chexops.a.one import g\n")
    (package / "a" / "three.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from chexops.a import one\n"
    )
    assert cycles(module_graph(package)) == [["chexops.a.one", "chexops.a.two"]]


def test_at_most_a_dozen_files_directly_in_the_package_and_every_folder_says_what_it_may_import():
    assert len([p for p in PACKAGE.iterdir() if p.is_file()]) <= 12
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "import" in doc.lower(), (
            f"{init.relative_to(ROOT)}: the docstring says what lives there and what it may import"
        )


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(cwd / "training")},
    )


def test_the_layer_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_layer_contracts_catch_torch_in_the_service_and_an_upward_import(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(PACKAGE, copy / "training" / "chexops", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    metrics = copy / "training" / "chexops" / "core" / "labels.py"
    metrics.write_text(metrics.read_text() + "\n\ndef _late():\n    from chexops.export import bento  # noqa: F401\n")
    result = lint_imports(copy)
    assert result.returncode != 0
    assert "Each lifecycle stage imports only the stages below it BROKEN" in result.stdout
    assert "never import torch, MLflow, click or the training code BROKEN" in result.stdout  # bento → registry → train


def test_the_service_module_imports_without_torch_or_mlflow(served_model):
    """Nor, since BentoML's arbiter loads it too (before it starts the worker), what only the worker uses
    (SQLAlchemy, for the feedback store) or what only a registry reference needs (the registry, the training
    config): docs/benchmarks.md "Start-up"."""
    unused = ("torch", "mlflow", "sqlalchemy", "chexops.registry", "chexops.config")
    code = (
        "import json, sys; sys.path.insert(0, '.'); import bentos.service as service; "
        f"print(json.dumps({{'service': service.Chexops.name, **{{m: m in sys.modules for m in {unused!r}}}}}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=180,
        env=child_env(served_model.home, CHEXOPS_MODEL=served_model.tag),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"service": "chexops", **dict.fromkeys(unused, False)}
