"""Learning check: kdlib's trainer against HF Trainer on the same student, data, LoRA settings, optimiser,
schedule and number of steps, both evaluated on the same held-out items.

kdlib's side is the params file's no_trace cell (first student, first seed): the run's own when
`kdlib run PARAMS --to 04` has trained it (its meta.json must record the same training texts and settings),
else trained here into the run folder exactly as notebook 03 would. HF Trainer's twin
(benchmarks/hf_baseline.py, tuned: length-grouped batches, kdlib's collate, bf16 only where native) trains
on the very same tokenised examples, whose prompt labels are masked: a completion-only loss, as TRL's
SFTTrainer computes it. It is written to <run>/learning_parity/ as a cell of its own. Both are evaluated
on the run's held-out items by notebook 04's evaluate_cells (kdlib's frames are notebook 04's own, reused;
the twin's are stored beside it), greedy generation under the params' evaluation settings.

Prints, per bAbI task, each trainer's accuracy with its 95 % Wilson interval and the paired difference
kdlib - HF Trainer with its 95 % paired bootstrap interval and McNemar's test (kdlib.analysis.tables.
paired_comparisons); then whether kdlib reaches --bar on the first task and whether the difference's
interval there includes 0. Writes the same table to <run>/learning_parity/parity.csv. Not a timed test.

    .venv/bin/python benchmarks/learning_parity.py params/learning_check.yaml
    .venv/bin/python benchmarks/learning_parity.py params/learning_check.yaml --student tiny-llama \\
        --n-train 32 --n-eval 16 --epochs 1 --max-length 4096 --run-dir /tmp/parity-smoke   # smoke check
    .venv/bin/python benchmarks/learning_parity.py params/learning_check.yaml --seed 1 \\
        --run-dir outputs/learning_check_seed1   # both trainers again under another training seed
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from hf_baseline import hf_train

from kdlib import io
from kdlib.analysis.tables import paired_comparisons, task_accuracy
from kdlib.cells import weights_folder
from kdlib.config import ExperimentParams, load_params, validate_params
from kdlib.data.babi import BABI_TASKS
from kdlib.data.schema import frame_to_items
from kdlib.evaluation.generation import evaluate_cells
from kdlib.models import native_bf16, resolve_device
from kdlib.paths import RunLayout, default_run_dir
from kdlib.teacher.stage import load_run_items
from kdlib.training.conditions import TextExample
from kdlib.training.grid import (
    Cell,
    CellJob,
    TraceSources,
    cell_job,
    prepare_student,
    save_trained,
    train_cell,
    train_settings,
)
from kdlib.training.loop import encode_example

TRAINERS = {"kdlib": "kdlib", "hf_trainer": "HF Trainer"}
OVERRIDES = {  # option -> (section path, key) in the params
    "student": (("sft",), "students"),
    "seed": (("sft",), "seeds"),
    "n_train": (("teacher_traces", "dataset"), "n_train"),
    "n_eval": (("teacher_traces", "dataset"), "n_eval"),
    "epochs": (("sft",), "epochs"),
    "max_length": (("sft",), "max_length"),
}


def babi_tasks(params: ExperimentParams) -> list[str]:
    """The names of the bAbI tasks the params train and evaluate on, in their order."""
    numbers = params.teacher_traces.dataset.options.get("tasks") or list(BABI_TASKS)
    return [BABI_TASKS[n] for n in numbers]


def overridden(params: ExperimentParams, args) -> ExperimentParams:
    """The params with the command line's overrides, validated like a params file."""
    raw = params.model_dump(mode="json")
    for option, (path, key) in OVERRIDES.items():
        value = getattr(args, option)
        if value is not None:
            section = raw
            for part in path:
                section = section[part]
            section[key] = [value] if key in ("students", "seeds") else value
    return validate_params(raw, f"{args.params} with overrides")


def run_items(params: ExperimentParams, run: RunLayout, source: str):
    """(training items, evaluation items) as notebook 01 picks them; the run's items.parquet when the run
    has one, which must hold the same items."""
    train_items, eval_items, _ = load_run_items(params.teacher_traces, params.common)
    if not run.items.exists():
        return train_items, eval_items
    stored = io.read_parquet(run.items)
    if set(stored["id"]) != {item.id for item in train_items + eval_items}:
        raise ValueError(f"{run.items} holds other items than {source} picks; give another --run-dir")
    return frame_to_items(stored, role="train"), frame_to_items(stored, role="eval")


def kdlib_cell(job: CellJob, source: str) -> dict:
    """kdlib's cell: the run's own when finished with the same params, else trained now (never replacing a
    cell trained under other params)."""
    meta = Path(job.cell_dir) / "meta.json"
    if meta.exists() and io.read_json(meta)["params"] != job.params:
        recorded = io.read_json(meta)["params"]
        keys = sorted(k for k in {*recorded, *job.params} if recorded.get(k) != job.params.get(k))
        raise ValueError(
            f"{meta}: this cell's {', '.join(keys)} differ from what {source} gives; run kdlib on the same "
            "params file, or give another --run-dir"
        )
    return train_cell(job)


def hf_twin(job: CellJob, params: ExperimentParams, run: RunLayout) -> dict:
    """HF Trainer's twin of kdlib's cell, trained on the same examples (or kept from an earlier run of this
    script); its summary row, with `cell` relative to `run`."""
    sft, cell = params.sft, job.cell
    cell_dir = run.sft_cell(cell.student, cell.condition.name, cell.seed)
    twin_params = {**job.params, "trainer": "transformers.Trainer, benchmarks/hf_baseline.py tuned"}
    row = {
        "student": cell.student,
        "condition": cell.condition.name,
        "transform": cell.condition.transform,
        "seed": cell.seed,
        "cell": str(cell_dir.relative_to(run.root / "sft")),
    }
    meta = cell_dir / "meta.json"
    if meta.exists() and io.read_json(meta)["params"] == twin_params:
        return {**io.read_json(meta)["summary"], "status": "finished earlier"}
    device = resolve_device(params.common.device)
    bf16 = sft.bf16 and native_bf16(device)
    model, tokenizer = prepare_student(cell.student, sft, device=device, seed=cell.seed, bf16=bf16)
    examples = [encode_example(model, tokenizer, TextExample(**t), sft.max_length) for t in job.texts]
    result = hf_train(
        model, tokenizer, examples, train_settings(sft, seed=cell.seed, bf16=bf16), variant="tuned"
    )
    save_trained(model, tokenizer, cell_dir / weights_folder(sft.finetune))
    summary = {**row, "examples": len(examples), "bf16": bf16, **result}
    io.write_meta(cell_dir, params=twin_params, artifacts=[weights_folder(sft.finetune)], summary=summary)
    return {**summary, "status": "trained"}


def parity_table(predictions: pd.DataFrame, params: ExperimentParams) -> pd.DataFrame:
    """Per task (question_type, in the params' order): each trainer's accuracy with its Wilson interval,
    and kdlib - HF Trainer on the same items with a paired bootstrap interval and McNemar's test."""
    outcomes = predictions.assign(
        metric=predictions["question_type"], value=predictions["answer_correct"] * 1.0
    )
    paired = paired_comparisons(
        outcomes,
        baseline="hf_trainer",
        confidence=params.correlation.confidence,
        n_resamples=params.correlation.bootstrap_resamples,
        seed=params.common.seed,
    )
    rows = []
    accuracy = {
        trainer: task_accuracy(predictions[predictions["condition"] == trainer]).set_index("task")
        for trainer in TRAINERS
    }
    for task in babi_tasks(params):
        row = {"task": task}
        for trainer in TRAINERS:
            hits = accuracy[trainer].loc[task]
            row.update(
                {f"{trainer}_n": int(hits["n"]), trainer: hits["accuracy"], f"{trainer}_low": hits["low"]}
            )
            row[f"{trainer}_high"] = hits["high"]
        difference = paired[paired["metric"] == task].iloc[0]
        for column in ("difference", "difference_ci_low", "difference_ci_high", "mcnemar_p"):
            row[column] = difference[column]
        rows.append(row)
    return pd.DataFrame(rows)


def report(table: pd.DataFrame, bar: float, first_task: str) -> list[str]:
    lines = []
    for row in table.to_dict(orient="records"):
        lines.append(f"task {row['task']} ({row['kdlib_n']} held-out items):")
        for trainer, name in TRAINERS.items():
            lines.append(
                f"  {name:<10} {row[trainer]:6.1%}  95 % Wilson [{max(row[f'{trainer}_low'], 0.0):.1%}, "
                f"{min(row[f'{trainer}_high'], 1.0):.1%}]"
            )
        lines.append(
            f"  kdlib - HF Trainer: {100 * row['difference']:+.1f} points, 95 % paired bootstrap "
            f"[{100 * row['difference_ci_low']:+.1f}, {100 * row['difference_ci_high']:+.1f}]; McNemar "
            f"p = {row['mcnemar_p']:.3g}"
        )
    first = table.set_index("task").loc[first_task]
    reaches = first["kdlib"] >= bar
    same = first["difference_ci_low"] <= 0 <= first["difference_ci_high"]
    lines.append(
        f"kdlib reaches {bar:.0%} on {first_task}: {'yes' if reaches else 'NO'} ({first['kdlib']:.1%}); "
        f"the same accuracy as HF Trainer (difference's 95 % interval includes 0): {'yes' if same else 'NO'}"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("params", help="params file of the learning check, e.g. params/learning_check.yaml")
    parser.add_argument("--run-dir", help="run folder (default: outputs/<run_name>; required with overrides)")
    parser.add_argument("--bar", type=float, default=0.95, help="kdlib's accuracy to reach on the first task")
    parser.add_argument("--student", help="override: the one student")
    parser.add_argument("--seed", type=int, help="override: the one training seed (sft.seeds; items stay)")
    parser.add_argument("--n-train", type=int, help="override: training items")
    parser.add_argument("--n-eval", type=int, help="override: evaluation items")
    parser.add_argument("--epochs", type=int, help="override: epochs")
    parser.add_argument("--max-length", type=int, help="override: sft.max_length (tiny models: 4096)")
    args = parser.parse_args()
    params = load_params(args.params)
    if any(getattr(args, option) is not None for option in OVERRIDES):
        if args.run_dir is None:
            parser.error(
                "overrides change the cells: give --run-dir, so that the run's own folder stays as is"
            )
        params = overridden(params, args)
    dataset = params.teacher_traces.dataset
    if dataset.name != "babi":
        parser.error(f"{args.params}: the learning check reads bAbI tasks, not {dataset.name!r}")
    spec = next((s for s in params.sft.condition_specs() if s.transform == "no_trace"), None)
    if spec is None:
        parser.error(f"{args.params}: key 'sft.conditions' has no no_trace condition")
    run = RunLayout(args.run_dir or default_run_dir(params.common.run_name))
    twin_run = RunLayout(run.root / "learning_parity")
    common, sft, device = params.common, params.sft, resolve_device(params.common.device)
    with io.run_lock(run.root):
        train_items, eval_items = run_items(params, run, args.params)
        cell = Cell(sft.students[0], spec, sft.seeds[0])
        job = cell_job(
            run.sft_cell(cell.student, spec.name, cell.seed),
            cell,
            train_items,
            TraceSources(traces=pd.DataFrame(), steps={}),
            sft=sft,
            common=common,
            fmt=params.decomposition.trace_format,
        )
        cells = {
            "kdlib": (run, kdlib_cell(job, args.params)),
            "hf_trainer": (twin_run, hf_twin(job, params, twin_run)),
        }
        for trainer, (_, row) in cells.items():
            steps, loss = row["steps"], row["final_loss"]
            print(f"{TRAINERS[trainer]}: {row['status']}, {steps} optimiser steps, final loss {loss:.4f}")
        predictions = pd.concat(
            [
                evaluate_cells(
                    layout,
                    pd.DataFrame([row]),
                    eval_items,
                    device=device,
                    seed=common.seed,
                    params=params.evaluation,
                )["predictions"].assign(condition=trainer)
                for trainer, (layout, row) in cells.items()
            ],
            ignore_index=True,
        )
        table = parity_table(predictions, params)
        io.write_csv(twin_run.root / "parity.csv", table)
        io.write_meta(
            twin_run.root,
            params=params.model_dump(mode="json"),
            artifacts=["parity.csv", "sft/"],
            command=f"python benchmarks/learning_parity.py {' '.join(sys.argv[1:])}",
            hf_trainer_seconds=cells["hf_trainer"][1]["seconds"],
        )
    tasks = babi_tasks(params)
    print(
        f"learning check: {cell.label}, {len(train_items)} training items of bAbI {', '.join(tasks)}, "
        f"{len(job.texts)} examples; results in {twin_run.root / 'parity.csv'}"
    )
    print("\n".join(report(table, args.bar, tasks[0])))


if __name__ == "__main__":
    main()
