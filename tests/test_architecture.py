"""The arrows between gptlab's parts follow the data flow: nothing imports a part that comes after it.

Every import is read from the source, deferred ones inside functions included, so a cycle cannot
hide behind a function-level import."""

import ast
from pathlib import Path

import gptlab

PACKAGE = Path(gptlab.__file__).parent

# The data flow, upstream first (shared/DESIGN.md). The generation token loop comes before training
# because the trainer samples text with it at each evaluation.
LAYERS = [
    "errors",
    "atomic",
    "outputs",
    "config",
    "device",
    "tokenizers",
    "data",
    "models",
    "checkpoint",
    "generation",
    "training",
    "evaluation",
    "interop",
    "serving",
    "sweeps",
    "cli",
    "__main__",
]


def unit(module: str) -> str:
    """gptlab.data.prepare -> data; gptlab.checkpoint -> checkpoint."""
    return module.split(".")[1] if module.count(".") else ""


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("gptlab.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "gptlab":
                found |= {f"gptlab.{a.name}" for a in node.names}
            elif node.module.startswith("gptlab."):
                found.add(node.module)
    return found


def edges() -> set[tuple[str, str, str]]:
    out = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        here = rel.parts[0]
        for module in imports_of(path):
            there = unit(module)
            if there and there != here:
                out.add((here, there, str(rel)))
    return out


def test_every_part_of_the_package_has_a_place_in_the_flow():
    parts = {
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if p.suffix == ".py" or (p / "__init__.py").is_file()
    }
    parts.discard("__init__")
    assert parts - set(LAYERS) == set(), "add new modules or subpackages to LAYERS, at their place in the data flow"


def test_imports_point_upstream_only():
    rank = {name: i for i, name in enumerate(LAYERS)}
    wrong = sorted(f"{where} imports gptlab.{there}" for here, there, where in edges() if rank[there] >= rank[here])
    assert wrong == []


def test_no_two_parts_import_each_other():
    pairs = {(a, b) for a, b, _ in edges()}
    assert sorted((a, b) for a, b in pairs if (b, a) in pairs) == []


def test_the_checker_sees_deferred_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from gptlab.training.trainer import train\n    import gptlab.serving.app\n")
    assert imports_of(src) == {"gptlab.training.trainer", "gptlab.serving.app"}
