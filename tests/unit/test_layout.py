"""The package's layout holds: no import circle, Ray Data's side free of torch, Tune's
subclasses in search/, and every documented command still runs as `python -m mgc_ray.X`."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "mgc_ray"
COMMANDS = ("tune", "prepare", "demo", "evaluate", "predict", "compare", "synth_cache")


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every mgc_ray module `path` imports, at the top or inside a function, TYPE_CHECKING included."""
    me = _module(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    modules = {_module(p) for p in PKG.rglob("*.py")}
    return {m for m in found if m in modules and m != me}


def _graph() -> dict[str, set[str]]:
    return {_module(p): _imports(p) for p in PKG.rglob("*.py")}


def test_the_import_graph_has_no_circle():
    graph = _graph()
    # a package's __init__ that re-exports its own modules is not a circle through them
    edges = {m: {d for d in deps if not (m.startswith(d + ".") and d in graph)} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(d) :] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_ray_data_side_imports_no_torch():
    mods = sorted(_module(p) for p in (PKG / "data").glob("*.py"))
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in mods)
        + "print(sorted(m for m in ('torch', 'torchaudio') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"mgc_ray.data loads {out.stdout.strip()}"


def test_every_tune_subclass_lives_in_search():
    tune_bases = {
        "Callback",
        "Searcher",
        "ASHAScheduler",
        "TrialScheduler",
        "ConcurrencyLimiter",
        "Stopper",
        "FIFOScheduler",
        "Trainable",
        "SearchAlgorithm",
    }
    outside = []
    for p in PKG.rglob("*.py"):
        if p.parent.name == "search":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases}
                if bases & tune_bases:
                    outside.append(f"{_module(p)}.{node.name}")
    assert not outside, f"Tune subclasses outside mgc_ray/search: {outside}"
    assert "(ASHAScheduler)" in (PKG / "search" / "rungs.py").read_text(), "the check would see SampleASHA"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_help(command):
    out = subprocess.run(
        [sys.executable, "-m", f"mgc_ray.{command}", "--help"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "usage:" in out.stdout, out.stderr[-2000:]
