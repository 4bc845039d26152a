"""The package's shape: imports point down only, low-level modules stay low, the CLI's
help imports no torch, and every command's user errors are one line."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "mnistlab"


def import_graph() -> dict[str, set[str]]:
    """module -> mnistlab modules it imports, counting imports inside functions (and under
    TYPE_CHECKING); a package and its own submodules are not edges."""
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = p
    graph: dict[str, set[str]] = {}
    for name, p in mods.items():
        base = name.split(".") if p.name == "__init__.py" else name.split(".")[:-1]
        edges = set()
        for node in ast.walk(ast.parse(p.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                prefix = base[: len(base) - node.level + 1] if node.level else []
                m = ".".join(prefix + ([node.module] if node.module else []))
                targets = [m] + [f"{m}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != name and not (t.startswith(name + ".")
                                                    or name.startswith(t + ".")):
                    edges.add(t)
        graph[name] = edges
    return graph


def test_no_import_cycle_inside_the_package() -> None:
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(v: str, path: list[str]) -> None:
        state[v] = 1
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                cycles.append(path[path.index(w):] + [w])
            elif w not in state:
                visit(w, path + [w])
        state[v] = 2

    for v in sorted(graph):
        if v not in state:
            visit(v, [v])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
    assert len(graph) > 40  # the walk saw the whole package


# what the low-level modules may import: nothing that trains, evaluates or serves
LOW_LEVEL = {
    "mnistlab.errors": set(),
    "mnistlab.limits": set(),
    "mnistlab.config": {"mnistlab.errors"},
    "mnistlab.distributed": {"mnistlab.errors"},
    "mnistlab.schedules": {"mnistlab.config"},
    "mnistlab.engines.base": {"mnistlab.errors", "mnistlab.config"},
    "mnistlab.compact": set(),  # the compact weight format: a leaf that checkpoint reads
    "mnistlab.checkpoint": {"mnistlab.engines", "mnistlab.errors", "mnistlab", "mnistlab.compact"},
}


@pytest.mark.parametrize("module", sorted(LOW_LEVEL))
def test_low_level_modules_import_no_feature_module(module: str) -> None:
    assert import_graph()[module] <= LOW_LEVEL[module]


def test_data_imports_nothing_above_it() -> None:
    graph = import_graph()
    for name, edges in graph.items():
        if name == "mnistlab.data" or name.startswith("mnistlab.data."):
            above = {e for e in edges if not e.startswith("mnistlab.data")}
            assert above <= {"mnistlab.errors", "mnistlab.preprocess", "mnistlab.limits",
                             "mnistlab"}, (name, above)


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)


def test_help_and_config_import_no_torch() -> None:
    out = _python("-X", "importtime", "-m", "mnistlab", "--help")
    assert out.returncode == 0 and "train" in out.stdout and "compare" in out.stdout
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines()}
    assert "torch" not in imported and "numpy" not in imported
    probe = ("import sys, mnistlab, mnistlab.config, mnistlab.cli; "
             "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    assert _python("-c", probe).stdout.strip() == "[]"


def test_python_dash_m_is_the_command() -> None:
    out = _python("-m", "mnistlab", "--version")
    assert out.returncode == 0 and out.stdout.startswith("mnistlab ")


def test_help_shows_defaults_types_and_choices() -> None:
    out = _python("-m", "mnistlab", "train", "--help").stdout
    assert "--optimizer {sgd,adam,adamw,rmsprop,adadelta}" in out
    assert "--lr FLOAT" in out and "[default: 0.001]" in out
    assert "--epochs INT" in out and "--model-args JSON" in out
    assert "--amp, --no-amp" in out and "optimization settings" in out


def test_literal_cli_constants_match_the_library() -> None:
    from mnistlab import augment, config, data
    from mnistlab.cli import data as cli_data

    assert cli_data.BASE_NAMES == data.BASE_NAMES and cli_data.SPLITS == data.SPLITS
    assert cli_data.ENV_VAR == data.ENV_VAR
    assert config.AUGMENT_PRESETS == tuple(augment.PRESETS)
