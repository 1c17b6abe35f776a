"""The package's shape follows the pipeline: a base (the core modules and kdlib.data), one subpackage per
stage (01 teacher, 02 traces, 03 training, 04 evaluation, 05 analysis), and the entry points on top. A
module imports only its own layer or layers below it, and no modules import each other in a circle."""

import ast
from pathlib import Path

import kdlib

PACKAGE = Path(kdlib.__file__).parent
STAGES = ("teacher", "traces", "training", "evaluation", "analysis")  # notebooks 01..05
ENTRY_POINTS = ("cli", "runner", "preflight", "planner", "__main__")  # run the chain: may import every stage


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """0: the base (core modules, kdlib.data); 1-5: the stage of notebook 01-05; 6: the entry points."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in STAGES:
        return STAGES.index(parts[1]) + 1
    if len(parts) > 1 and parts[1] in ENTRY_POINTS:
        return len(STAGES) + 1
    return 0


def imports() -> dict[str, set[str]]:
    """module -> the kdlib modules it imports, anywhere in its body (function-level imports included)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for module, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kdlib"):
                names = [f"{node.module}.{a.name}" for a in node.names]
                found |= {n if n in modules else node.module for n in names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("kdlib")}
        graph[module] = {m for m in found if m in modules and m != module}
    return graph


def test_modules_import_only_their_layer_or_below():
    upward = [
        (module, imported)
        for module, imported_modules in imports().items()
        for imported in imported_modules
        if layer(imported) > layer(module) and imported != "kdlib"
    ]
    assert upward == []


def test_no_import_circles():
    graph = imports()
    circles = []

    def visit(module, path):
        for imported in graph.get(module, ()):
            if imported in path:
                circles.append(path[path.index(imported) :] + [imported])
            elif imported not in done:
                visit(imported, [*path, imported])
        done.add(module)

    done: set[str] = set()
    for module in graph:
        if module not in done:
            visit(module, [module])
    # a package's __init__ importing its own submodules is not a circle of the pipeline
    circles = [c for c in circles if not all(m.startswith(c[0].rsplit(".", 1)[0]) for m in c)]
    assert circles == []


def test_every_stage_says_which_notebook_drives_it():
    for number, stage in enumerate(STAGES, start=1):
        doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text(encoding="utf-8")))
        assert doc and f"Stage 0{number}" in doc and f"notebooks/0{number}_" in doc, stage


def test_notebooks_only_wire():
    """Each notebook has at most 60 code lines outside its parameters cell: logic lives in kdlib."""
    import jupytext

    from kdlib.paths import NOTEBOOKS_DIR

    for path in sorted(NOTEBOOKS_DIR.glob("0*.py")):
        cells = jupytext.read(path).cells
        code = [
            line
            for cell in cells
            if cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", [])
            for line in cell.source.splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
        assert len(code) <= 60, f"{path.name}: {len(code)} code lines"


def test_readme_is_an_entry_point():
    """README stays short (what, two commands, where results are, a map, links); the guides hold the rest."""
    readme = (PACKAGE.parents[1] / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    for guide in ("teacher-rationales", "checkable-traces", "training", "evaluation", "analysis", "planning"):
        assert f"(docs/{guide}.md)" in readme, guide
