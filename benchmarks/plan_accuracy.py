"""The planner's estimate against a measured run: kdlib plan, then kdlib run, of the same params file.

Calibrates the params' models afresh (kdlib plan --recalibrate), runs all five notebooks into a fresh
folder with fresh teacher and judge caches (every call made, every cell trained), and prints per notebook
the estimated and measured seconds and their ratio. The stated tolerance is the total within a factor
of 1.5 either way (--tolerance); notebook start-up (kernel, imports, export) is not in the estimate,
which dominates tiny runs. Run on an idle machine: other processes slow the calibration and the run
unequally. Nothing here is a timed assertion.

    .venv/bin/python benchmarks/plan_accuracy.py params/smoke.yaml
    .venv/bin/python benchmarks/plan_accuracy.py params/demo.yaml
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from kdlib import io
from kdlib.config import NOTEBOOKS, dump_params, load_params
from kdlib.planner import plan_params
from kdlib.runner import run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("params", help="params YAML file")
    parser.add_argument("--tolerance", type=float, default=1.5, help="accepted factor, total time")
    args = parser.parse_args()
    params = load_params(args.params)
    plan = plan_params(params, recalibrate=True)
    estimated = dict(zip(plan.notebooks["notebook"], plan.notebooks["estimated_seconds"], strict=True))
    with tempfile.TemporaryDirectory() as folder:
        cache = str(Path(folder) / "generations.sqlite")
        explanations = params.evaluation.explanations.model_copy(update={"cache_path": cache})
        cold = params.model_copy(
            update={
                "teacher_traces": params.teacher_traces.model_copy(update={"cache_path": cache}),
                "evaluation": params.evaluation.model_copy(update={"explanations": explanations}),
            }
        )
        params_file = io.write_text(Path(folder) / "params.yaml", dump_params(cold))
        run_dir = run(params_file, run_dir=Path(folder) / "run")
        record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    measured = {name: record["notebooks"][name]["seconds"] for name in NOTEBOOKS}
    print(f"{'notebook':<20}{'estimated s':>12}{'measured s':>12}{'ratio':>8}")
    for name in NOTEBOOKS:
        ratio = measured[name] / estimated[name] if estimated[name] else float("nan")
        print(f"{name:<20}{estimated[name]:>12.1f}{measured[name]:>12.1f}{ratio:>8.2f}")
    total_estimated, total_measured = sum(estimated.values()), sum(measured.values())
    ratio = total_measured / total_estimated
    within = 1 / args.tolerance <= ratio <= args.tolerance
    print(f"{'total':<20}{total_estimated:>12.1f}{total_measured:>12.1f}{ratio:>8.2f}")
    print(f"measured / estimated = {ratio:.2f}: {'within' if within else 'outside'} x{args.tolerance:g}")
    for warning in plan.warnings:
        print(f"plan warning: {warning}")


if __name__ == "__main__":
    main()
