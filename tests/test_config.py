"""Params files: the schema and its agreement with every notebook's parameters cell (malformed files:
test_bad_params.py)."""

import ast
import re

import jupytext
import pytest
import yaml

from kdlib import config
from kdlib.paths import NOTEBOOKS_DIR, REPO_ROOT
from tests.helpers import PARAMS_DIR

PARAMS_FILES = sorted(PARAMS_DIR.glob("*.yaml"))


def parameters_cell(notebook: str) -> dict:
    """name -> literal value of the one cell tagged `parameters` (which must hold literals only)."""
    nb = jupytext.read(NOTEBOOKS_DIR / f"{notebook}.py")
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{notebook}: expected one parameters cell, found {len(cells)}"
    values = {}
    for statement in ast.parse(cells[0].source).body:
        assert isinstance(statement, ast.Assign) and len(statement.targets) == 1, ast.dump(statement)
        values[statement.targets[0].id] = ast.literal_eval(statement.value)
    return values


def test_the_params_files_the_makefile_and_tests_run_exist():
    """`make demo` and `make studies` name params files, and so do test_smoke and test_determinism."""
    makefile = (REPO_ROOT / "Makefile").read_text()
    studies = re.search(r"^STUDIES := (.+)$", makefile, re.MULTILINE).group(1).split()
    assert "params/demo.yaml" in makefile and studies, "Makefile: no demo params or no STUDIES"
    assert {p.name for p in PARAMS_FILES} >= {"demo.yaml", "smoke.yaml", *(f"{s}.yaml" for s in studies)}


@pytest.mark.parametrize("path", PARAMS_FILES, ids=lambda p: p.name)
def test_params_file_validates_and_matches_notebooks(path):
    params = config.load_params(path)
    for notebook in config.NOTEBOOKS:
        cell = parameters_cell(notebook)
        injected = params.notebook_parameters(notebook, "outputs/x")
        assert set(injected) == set(cell), f"{path.name} vs {notebook}: {set(injected) ^ set(cell)}"
        common, section = config.notebook_params(notebook, injected)  # what the notebook validates back
        assert {"run_dir": injected["run_dir"], **common.model_dump(), **section.model_dump()} == injected


@pytest.mark.parametrize("notebook", config.NOTEBOOKS)
def test_notebook_defaults_are_valid_params(notebook):
    cell = parameters_cell(notebook)
    expected = (
        {"run_dir"} | set(config.CommonParams.model_fields) | set(config.SECTIONS[notebook].model_fields)
    )
    assert set(cell) == expected
    common, section = config.notebook_params(notebook, cell)
    assert {"run_dir": cell["run_dir"], **common.model_dump(), **section.model_dump()} == cell


def test_schema_defaults_are_the_demo():
    """Defaults live in one place: params/demo.yaml sets nothing but its run name (the default one)."""
    demo_file = yaml.safe_load((PARAMS_DIR / "demo.yaml").read_text(encoding="utf-8"))
    assert demo_file == {"common": {"run_name": "demo"}}
    assert config.load_params(PARAMS_DIR / "demo.yaml") == config.ExperimentParams()


def test_notebook_defaults_equal_demo_params():
    """Run by hand in JupyterLab, each notebook uses the offline default: params/demo.yaml."""
    demo = config.load_params(PARAMS_DIR / "demo.yaml")
    for notebook in config.NOTEBOOKS:
        cell = parameters_cell(notebook)
        injected = demo.notebook_parameters(notebook, "outputs/demo")
        assert cell == injected, notebook


def test_every_field_is_documented():
    def check(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, config.Schema):
                check(annotation)

    for section in [config.CommonParams, *config.SECTIONS.values()]:
        check(section)
