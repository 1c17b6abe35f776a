"""Params files: the schema, its errors, and agreement with every notebook's parameters cell."""

import ast

import jupytext
import pytest

from kdlib import config
from kdlib.paths import NOTEBOOKS_DIR, PARAMS_DIR

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


def test_there_are_params_files():
    assert {p.name for p in PARAMS_FILES} >= {"demo.yaml", "smoke.yaml"}


@pytest.mark.parametrize("path", PARAMS_FILES, ids=lambda p: p.name)
def test_params_file_validates_and_matches_notebooks(path):
    params = config.load_params(path)
    for notebook in config.NOTEBOOKS:
        cell = parameters_cell(notebook)
        injected = params.notebook_parameters(notebook, "outputs/x")
        assert set(injected) == set(cell), f"{path.name} vs {notebook}: {set(injected) ^ set(cell)}"


@pytest.mark.parametrize("notebook", config.NOTEBOOKS)
def test_notebook_defaults_are_valid_params(notebook):
    cell = parameters_cell(notebook)
    expected = (
        {"run_dir"} | set(config.CommonParams.model_fields) | set(config.SECTIONS[notebook].model_fields)
    )
    assert set(cell) == expected
    common, section = config.notebook_params(notebook, cell)
    assert isinstance(section, config.SECTIONS[notebook])


def test_notebook_defaults_equal_demo_params():
    """Run by hand in JupyterLab, each notebook uses the offline default: params/demo.yaml."""
    demo = config.load_params(PARAMS_DIR / "demo.yaml")
    for notebook in config.NOTEBOOKS:
        cell = parameters_cell(notebook)
        injected = demo.notebook_parameters(notebook, "outputs/demo")
        assert cell == injected, notebook


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("common: {run_name: x, colour: red}", "common.colour", "unknown key"),
        ("sft: {epochs: two}", "sft.epochs", "valid integer"),
        ("sft: {epochs: -1}", "sft.epochs", "greater than 0"),
        ("sft: {conditions: [no_trace, telepathy]}", "sft.conditions", "telepathy"),
        ("sft: {conditions: [no_trace, no_trace]}", "sft.conditions", "['no_trace'] appear more than once"),
        (
            "sft: {conditions: [{name: mt, transform: multitask, colour: red}]}",
            "sft.conditions.0.spec.colour",
            "unknown key",
        ),
        (
            "sft: {conditions: [{name: mt, transform: telepathy}]}",
            "sft.conditions.0.spec.transform",
            "unknown transform",
        ),
        ("sft: {seeds: [1, 1]}", "sft.seeds", "repeated entries"),
        ("sft: {finetune: half}", "sft.finetune", "'full', 'lora' or 'qlora'"),
        (
            "sft: {key_tokens: {top_k: 5, fraction: 0.2}}",
            "sft.key_tokens",
            "exactly one of top_k and fraction",
        ),
        (
            "sft: {conditions: [no_trace, key_tokens_after_label]}",
            "sft",
            "key_tokens.condition 'rationale_after_label' is not a condition of the grid",
        ),
        (
            "teacher_traces: {dataset: {n_train: 3, shuffle: yes}}",
            "teacher_traces.dataset.shuffle",
            "unknown key",
        ),
        ("common: {run_name: ../../etc}", "common.run_name", "no '..'"),
        ("evaluate: {}", "evaluate", "unknown key"),
        ("teacher_traces: {teacher: {backend: openai}}", "teacher_traces.teacher", "needs base_url"),
        (
            "teacher_traces: {teacher: {backend: openai, base_url: 'http://x/v1', api_key_env: 'sk-123'}}",
            "teacher_traces.teacher",
            "NAME, not a key",
        ),
        ("teacher_traces: {generation: {samples: 4}}", "teacher_traces.generation", "temperature > 0"),
        (
            "teacher_traces: {generation: {recipes: [socratic]}}",
            "teacher_traces.generation.recipes.0",
            "cot_label",
        ),
        ("teacher_traces: {imports: [{source: gpt4}]}", "teacher_traces.imports.0.source", "palm_cot"),
        (
            "teacher_traces: {generation: {top_p: 1.5}}",
            "teacher_traces.generation.top_p",
            "less than or equal",
        ),
        ("correlation: {confidence: 1.5}", "correlation.confidence", "less than 1"),
        (
            "correlation: {bootstrap_resamples: 10}",
            "correlation.bootstrap_resamples",
            "greater than or equal",
        ),
        (
            "correlation: {reference_results: nowhere/published.yaml}",
            "correlation.reference_results",
            "nowhere/published.yaml",
        ),
    ],
)
def test_bad_params_name_file_and_key(tmp_path, text, key, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(config.ParamsError) as error:
        config.load_params(path)
    assert str(path) in str(error.value)
    assert f"key '{key}'" in str(error.value)
    assert message in str(error.value)


def test_broken_yaml_names_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("common: {run_name: [unclosed\n")
    with pytest.raises(config.ParamsError, match="broken.yaml: not valid YAML"):
        config.load_params(path)


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "unsafe.yaml"
    path.write_text("common: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(config.ParamsError, match="not valid YAML"):
        config.load_params(path)


def test_every_field_is_documented():
    def check(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, config.Schema):
                check(annotation)

    for section in [config.CommonParams, *config.SECTIONS.values()]:
        check(section)
