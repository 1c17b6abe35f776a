"""`kdlib` command line: run the notebook chain, validate params files, plan a study, prepare offline models.

Each subcommand imports what it needs when it runs, so that `kdlib --help` and `kdlib validate
--schema-only` start without loading torch or the notebook stack.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import pandas as pd

from kdlib.config import NOTEBOOKS, ParamsError, load_params
from kdlib.io import RunLocked
from kdlib.progress import LogFormatter


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdlib", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="validate a params file, then execute notebooks 01..05 with papermill",
        description="Exit status: 0 done, 1 a notebook failed, 2 bad params, 3 another run holds the "
        "run folder (its lock file names the process).",
    )
    run.add_argument("params", help="params YAML file, e.g. params/demo.yaml")
    run.add_argument(
        "--run-dir",
        help="output folder, relative to the current directory (default: outputs/<common.run_name>)",
    )
    run.add_argument(
        "--only", metavar="NOTEBOOK", help=f"run one notebook ({', '.join(NOTEBOOKS)} or 01..05)"
    )
    run.add_argument("--from", dest="start_from", metavar="NOTEBOOK", help="start from this notebook")
    run.add_argument("--to", dest="stop_after", metavar="NOTEBOOK", help="stop after this notebook")
    run.add_argument("--kernel", help="Jupyter kernel name (default: kdlib if registered, else python3)")

    results = commands.add_parser(
        "results", help="write docs/results.md (and docs/figures/) from the study runs under outputs/"
    )
    results.add_argument("--outputs", help="folder holding the run folders (default: outputs/)")
    results.add_argument("--docs", help="folder for results.md and figures/ (default: docs/)")

    validate = commands.add_parser(
        "validate",
        help="check params files against the schema, then (kdlib.preflight) this machine, the data and the "
        "students' configs; no compute",
    )
    validate.add_argument("params", nargs="+")
    validate.add_argument(
        "--schema-only",
        action="store_true",
        help="skip the preflight checks, e.g. for a GPU twin checked on a laptop",
    )

    plan = commands.add_parser(
        "plan",
        help="count each notebook's and training cell's work (items, tokens, optimiser steps, evaluation "
        "passes) and estimate its wall time here; no training",
    )
    plan.add_argument("params", nargs="+")
    plan.add_argument(
        "--no-calibrate",
        action="store_true",
        help="counts only for models not yet calibrated on this machine (calibrating takes about a minute)",
    )
    plan.add_argument(
        "--recalibrate", action="store_true", help="measure every model again (e.g. on an idle machine)"
    )

    check = commands.add_parser(
        "check-traces",
        help="decompose every item of a dataset split, run the verifier, print trace statistics and verdicts",
    )
    check.add_argument("dataset", help="e.g. babi, cotempqa, openbookqa, msmarco-sample")
    check.add_argument("split", help="e.g. test")
    check.add_argument("--format", choices=["tagged", "plain"], default="tagged", help="trace format")
    check.add_argument("--options", default="{}", help="loader options as JSON, e.g. '{\"tasks\": [1, 2]}'")
    check.add_argument("--data-dir", help="data directory (default: $KDLIB_DATA_DIR, else ../shared/data)")

    prepare = commands.add_parser(
        "prepare-model", help="convert a packaged GGUF model to safetensors in the cache"
    )
    prepare.add_argument("name", help="kdlib model name, e.g. smollm2-135m-instruct")

    train_cell = commands.add_parser(
        "train-cell",
        help="train one grid cell from its job.json (what notebook 03 runs under `accelerate launch`)",
    )
    train_cell.add_argument("job", help="sft/<student>/<condition>/seed<k>/job.json")
    return parser


def _check_traces(args: argparse.Namespace) -> None:
    # imported when this subcommand runs (see the module docstring)
    from kdlib.data.registry import load_items
    from kdlib.traces.decomposition import (
        PERTURBATIONS,
        decompose,
        perturbation_coverage,
        summarise_verification,
        trace_statistics,
        verify_decomposition,
    )

    try:
        options = json.loads(args.options)
    except json.JSONDecodeError as error:
        raise ValueError(f"--options is not JSON: {error}") from None
    items = load_items(args.dataset, args.split, data_dir=args.data_dir, **options)
    decomposed = decompose(items, args.format, list(PERTURBATIONS), seed=0)
    check = verify_decomposition(items, decomposed, args.format)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 3):
        print(trace_statistics(decomposed).T, end="\n\n")
        print("perturbation applies to (share of items):")
        print(perturbation_coverage(decomposed, list(PERTURBATIONS)), end="\n\n")
        print(summarise_verification(check))
    missed = int((~check["detected"]).sum())
    print(f"\n{len(check)} traces, {missed} verdicts that do not name exactly the perturbed step")
    if missed:
        raise ValueError(f"the verifier missed {missed} traces")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = logging.StreamHandler()
    console.setFormatter(LogFormatter("%(asctime)s %(name)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[console])
    try:
        if args.command == "validate":
            # imported when this subcommand runs (see the module docstring)
            from kdlib.preflight import preflight

            for path in args.params:
                params = load_params(path)
                if not args.schema_only:
                    preflight(params, path)
                print(f"{path}: ok" + (" (schema only)" if args.schema_only else ""))
        elif args.command == "results":
            # imported when this subcommand runs (see the module docstring)
            from kdlib.analysis.results import STUDY_RUNS, write_results
            from kdlib.planner import training_gpu_cost, twin_lines

            files = [params_file for study in STUDY_RUNS for params_file in study.params_files]
            twins = {f: twin_lines(f) for f in files}
            print(write_results(args.outputs, args.docs, twin_plans=twins, gpu_cost=training_gpu_cost))
        elif args.command == "plan":
            # imported when this subcommand runs (see the module docstring)
            from kdlib.planner import describe_plan, plan_params

            for path in args.params:
                params = load_params(path)
                plan = plan_params(params, measure=not args.no_calibrate, recalibrate=args.recalibrate)
                print(describe_plan(path, plan))
        elif args.command == "check-traces":
            _check_traces(args)
        elif args.command == "prepare-model":
            # imported when this subcommand runs (see the module docstring)
            from kdlib.model_registry import PRETRAINED
            from kdlib.models import convert_gguf_to_cache

            if args.name not in PRETRAINED:
                raise ParamsError(f"unknown model {args.name!r}; choose from {sorted(PRETRAINED)}")
            print(convert_gguf_to_cache(args.name))
        elif args.command == "train-cell":
            # imported when this subcommand runs (see the module docstring)
            from accelerate import Accelerator

            from kdlib.training.grid import CellJob, fit_cell

            fit_cell(CellJob.read(args.job), Accelerator())
        else:
            # imported when this subcommand runs (see the module docstring)
            from kdlib.runner import (
                NotebookFailed,
                run,
            )

            try:
                run_dir = run(
                    args.params,
                    run_dir=args.run_dir,
                    only=args.only,
                    start_from=args.start_from,
                    stop_after=args.stop_after,
                    kernel=args.kernel,
                )
            except NotebookFailed as failure:
                print(f"kdlib: {failure}", file=sys.stderr)
                return 1
            except RunLocked as locked:
                print(f"kdlib: {locked}", file=sys.stderr)
                return 3
            print(f"run finished: {run_dir / 'index.html'}")
    except (ParamsError, ValueError) as error:
        print(f"kdlib: {error}", file=sys.stderr)
        return 2
    return 0
