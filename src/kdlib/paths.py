"""Where things live: the repository, runs, stage folders, the model cache and the data directory."""

from __future__ import annotations

import os
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent.parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
OUTPUTS_DIR = REPO_ROOT / "outputs"

DATA_DIR_ENV = "KDLIB_DATA_DIR"
CACHE_DIR_ENV = "KDLIB_CACHE"

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def check_run_name(name: str) -> str:
    """Return `name` if it is safe as one folder name (no separators, no '..'), else raise ValueError."""
    if not _RUN_NAME.match(name) or ".." in name:
        raise ValueError(
            f"run name {name!r} must be 1-100 characters of letters, digits, '_', '-', '.', "
            "start with a letter or digit, and contain no '..'"
        )
    return name


def student_folder(student: str) -> str:
    """A model name, hub id or path as one folder name: the last path parts, '/' as '--'."""
    parts = [p for p in Path(student).parts if p not in ("/", ".", "..")][-2:]
    return check_run_name("--".join(parts))


def resolve_repo_path(path: str | os.PathLike) -> Path:
    """Relative paths in params are relative to the repository root, wherever the kernel runs."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def default_run_dir(run_name: str) -> Path:
    return OUTPUTS_DIR / check_run_name(run_name)


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: the explicit setting, else $KDLIB_DATA_DIR, else ../shared/data beside the repo."""
    if data_dir is not None:
        chosen, origin = resolve_repo_path(data_dir), "param data_dir"
    elif os.environ.get(DATA_DIR_ENV):
        chosen, origin = Path(os.environ[DATA_DIR_ENV]).expanduser(), f"${DATA_DIR_ENV}"
    else:
        chosen, origin = REPO_ROOT.parent / "shared" / "data", "the default ../shared/data"
    if chosen.is_file():
        raise NotADirectoryError(f"data directory {chosen} (from {origin}) is a file, not a directory")
    if not chosen.is_dir():
        raise FileNotFoundError(f"data directory {chosen} (from {origin}) does not exist")
    return chosen


def cache_dir() -> Path:
    """Converted model weights and other reusable downloads: $KDLIB_CACHE or ~/.cache/kdlib."""
    root = os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "kdlib"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


class RunLayout:
    """Fixed artifact names inside one run folder; each stage folder also holds a meta.json."""

    def __init__(self, run_dir: str | os.PathLike):
        self.root = resolve_repo_path(run_dir)

    def stage(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def items(self) -> Path:
        return self.root / "teacher_traces" / "items.parquet"

    @property
    def traces(self) -> Path:
        return self.root / "teacher_traces" / "traces.parquet"

    @property
    def decomposed(self) -> Path:
        return self.root / "decomposition" / "decomposed.parquet"

    @property
    def verifier_check(self) -> Path:
        return self.root / "decomposition" / "verifier_check.csv"

    @property
    def verifier_summary(self) -> Path:
        return self.root / "decomposition" / "verifier_summary.csv"

    @property
    def trace_statistics(self) -> Path:
        return self.root / "decomposition" / "trace_statistics.csv"

    @property
    def rationale_check(self) -> Path:
        return self.root / "decomposition" / "rationale_check.csv"

    def sft_cell(self, student: str, condition: str, seed: int) -> Path:
        """sft/<student>/<condition>/seed<k>; a hub id's '/' becomes '--'."""
        return self.root / "sft" / student_folder(student) / check_run_name(condition) / f"seed{seed}"

    def trained_cell(self, cell: str) -> Path:
        """The folder of a cell named as sft/summary.csv's `cell` column names it (<student>/<condition>/
        seed<k>)."""
        return self.root / "sft" / cell

    @property
    def sft_summary(self) -> Path:
        return self.root / "sft" / "summary.csv"

    @property
    def predictions(self) -> Path:
        return self.root / "evaluation" / "predictions.parquet"

    @property
    def samples(self) -> Path:
        return self.root / "evaluation" / "samples.parquet"

    @property
    def choice_scores(self) -> Path:
        return self.root / "evaluation" / "choice_scores.parquet"

    def evaluated_cell(self, cell: str, part: str) -> Path:
        """evaluation/cells/<student>/<condition>/seed<k>/<part>: one cell's frames of one part
        (outputs, lens), kept so that a rerun reuses the cells whose inputs are unchanged."""
        return self.root / "evaluation" / "cells" / cell / part

    @property
    def metrics(self) -> Path:
        return self.root / "evaluation" / "metrics.csv"

    @property
    def attributions(self) -> Path:
        return self.root / "sft" / "attributions.parquet"

    @property
    def token_attributions(self) -> Path:
        return self.root / "sft" / "token_attributions.parquet"

    @property
    def attribution_record(self) -> Path:
        """What the attribution files were computed from (cell params, IG settings, items)."""
        return self.root / "sft" / "attributions.json"

    @property
    def attribution_files(self) -> list[Path]:
        return [self.attributions, self.token_attributions, self.attribution_record]

    @property
    def lens_ranks(self) -> Path:
        return self.root / "evaluation" / "lens_ranks.parquet"

    @property
    def lens_summary(self) -> Path:
        return self.root / "evaluation" / "lens_summary.csv"

    @property
    def lens_emergence(self) -> Path:
        return self.root / "evaluation" / "lens_emergence.csv"

    @property
    def lens_training(self) -> Path:
        return self.root / "evaluation" / "lens_training.csv"

    def tuned_lens(self, cell: str) -> Path:
        """evaluation/tuned_lens/<student>/<condition>/seed<k>.safetensors: one cell's translators."""
        return self.root / "evaluation" / "tuned_lens" / f"{cell}.safetensors"

    @property
    def explanations(self) -> Path:
        return self.root / "evaluation" / "explanations.parquet"

    @property
    def judge_ratings(self) -> Path:
        return self.root / "evaluation" / "judge_ratings.parquet"

    @property
    def human_ratings(self) -> Path:
        return self.root / "evaluation" / "human_ratings.parquet"

    @property
    def rating_sheet(self) -> Path:
        return self.root / "evaluation" / "rating_sheet.csv"

    @property
    def rating_form(self) -> Path:
        return self.root / "evaluation" / "rating_form.html"

    @property
    def explanation_scores(self) -> Path:
        return self.root / "evaluation" / "explanation_scores.csv"

    @property
    def rating_agreement(self) -> Path:
        return self.root / "evaluation" / "rating_agreement.csv"

    @property
    def contingency(self) -> Path:
        return self.root / "correlation" / "contingency.csv"

    @property
    def point_biserial(self) -> Path:
        return self.root / "correlation" / "point_biserial.csv"

    @property
    def outcomes(self) -> Path:
        return self.root / "correlation" / "outcomes.parquet"

    @property
    def cell_summary(self) -> Path:
        return self.root / "correlation" / "cell_summary.csv"

    @property
    def seed_summary(self) -> Path:
        return self.root / "correlation" / "seed_summary.csv"

    @property
    def paired_tests(self) -> Path:
        return self.root / "correlation" / "paired_tests.csv"

    @property
    def cochran_q(self) -> Path:
        return self.root / "correlation" / "cochran_q.csv"

    def group_tests(self, units: str, part: str) -> Path:
        """correlation/<units>_<part>.csv: units seed or rating, part omnibus or posthoc."""
        return self.root / "correlation" / f"{units}_{part}.csv"

    @property
    def run_flags(self) -> Path:
        return self.root / "correlation" / "run_flags.csv"

    @property
    def reference_comparison(self) -> Path:
        return self.root / "correlation" / "reference_comparison.csv"

    @property
    def published_results(self) -> Path:
        return self.root / "correlation" / "published_results.csv"
