"""Execute the notebook chain with papermill: validate params, run 01..05 into the run folder,
export HTML copies, and write the run's run.log, run.json and report (kdlib.report)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jupytext
import nbformat
import papermill
from jinja2 import DictLoader
from jupyter_client.kernelspec import KernelSpecManager
from nbconvert import HTMLExporter
from papermill.exceptions import PapermillExecutionError

from kdlib import io
from kdlib.config import NOTEBOOKS, ExperimentParams, dump_params, load_params, params_digest
from kdlib.paths import NOTEBOOKS_DIR, default_run_dir
from kdlib.planner import plan_params
from kdlib.preflight import preflight
from kdlib.progress import PROGRESS_ENV, LogFormatter
from kdlib.report import write_report

log = logging.getLogger("kdlib.run")

KERNEL_NAME = "kdlib"
# The kernels papermill starts draw kdlib's progress bars as text every 10 s (kdlib.progress), and the
# hub's and transformers' bars not at all: as widgets they would reach the log only at 0%.
KERNEL_ENVIRONMENT = {PROGRESS_ENV: "10", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the notebook, the failing cell and the kept executed copy."""


def select_notebooks(
    only: str | None = None, start_from: str | None = None, stop_after: str | None = None
) -> list[str]:
    """Notebook names to run, accepting a full name (03_sft) or its number prefix (03 or 3): one notebook,
    or the chain from `start_from` (default the first) through `stop_after` (default the last)."""

    def resolve(name: str) -> str:
        matches = [nb for nb in NOTEBOOKS if nb == name or nb.split("_")[0].lstrip("0") == name.lstrip("0")]
        if len(matches) != 1:
            raise ValueError(f"unknown notebook {name!r}; choose from {', '.join(NOTEBOOKS)}")
        return matches[0]

    if only and (start_from or stop_after):
        raise ValueError("give either --only, or --from and/or --to")
    if only:
        return [resolve(only)]
    first = NOTEBOOKS.index(resolve(start_from)) if start_from else 0
    last = NOTEBOOKS.index(resolve(stop_after)) if stop_after else len(NOTEBOOKS) - 1
    if first > last:
        raise ValueError(f"--from {start_from} comes after --to {stop_after}")
    return list(NOTEBOOKS[first : last + 1])


def default_kernel() -> str:
    return KERNEL_NAME if KERNEL_NAME in KernelSpecManager().find_kernel_specs() else "python3"


def load_notebook(name: str):
    """The jupytext percent source notebooks/<name>.py as an in-memory notebook."""

    return jupytext.read(NOTEBOOKS_DIR / f"{name}.py")


# nbconvert's lab template less the scripts it fetches from CDNs (require.js, MathJax, Mermaid, the widget
# manager), so that an executed copy opens from disk with no network. Its figures need none of them: the
# notebook itself carries plotly.js once (kdlib.plots.use_offline_renderer).
OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{% block html_head_js_requirejs %}{% endblock %}
{% block jupyter_widgets %}{% endblock %}
{% block html_head_js_mathjax %}{% endblock %}
{% block html_head_js_mermaidjs %}{% endblock %}
"""


def export_html(ipynb: Path) -> Path:
    """Write the executed notebook `ipynb` as HTML beside it, with OFFLINE_TEMPLATE."""

    exporter = HTMLExporter(
        extra_loaders=[DictLoader({"kdlib_offline.html.j2": OFFLINE_TEMPLATE})],
        template_file="kdlib_offline.html.j2",
    )
    body, _ = exporter.from_notebook_node(nbformat.read(ipynb, as_version=4))
    return io.write_text(ipynb.with_suffix(".html"), body)


def _failure_message(name: str, error, executed: Path) -> str:
    cell = f"cell {error.cell_index}" + (f" (execution count {error.exec_count})" if error.exec_count else "")
    return (
        f"notebook {name} failed at {cell}: {error.ename}: {error.evalue}; executed copy kept at {executed}"
    )


@contextmanager
def kernel_environment() -> Iterator[None]:
    """Set KERNEL_ENVIRONMENT (where not set already) for the kernels started inside, then restore."""
    added = {key: value for key, value in KERNEL_ENVIRONMENT.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def run_notebook(name: str, params: ExperimentParams, run_dir: Path, kernel: str) -> Path:
    executed = run_dir / "notebooks" / f"{name}.ipynb"
    running = executed.with_name(f".{name}.running.ipynb")  # papermill saves it as cells finish
    executed.parent.mkdir(parents=True, exist_ok=True)
    try:
        with kernel_environment():
            papermill.execute_notebook(
                load_notebook(name),
                str(running),
                parameters=params.notebook_parameters(name, run_dir),
                kernel_name=kernel,
                cwd=str(NOTEBOOKS_DIR),
                log_output=True,
                progress_bar=False,
                coalesce_streams=True,  # a cell's text keeps each progress bar's last frame only
            )
    except PapermillExecutionError as error:
        os.replace(running, executed)
        export_html(executed)
        raise NotebookFailed(_failure_message(name, error, executed)) from None
    os.replace(running, executed)
    export_html(executed)
    return executed


def _attach_log_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(LogFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("kdlib", "papermill"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
    return handler


def run(
    params_path: str | Path,
    *,
    run_dir: str | Path | None = None,
    only: str | None = None,
    start_from: str | None = None,
    stop_after: str | None = None,
    kernel: str | None = None,
) -> Path:
    """Validate `params_path` (the schema, then kdlib.preflight), then execute the selected notebooks in
    order into the run folder."""
    params = load_params(params_path)
    notebooks = select_notebooks(only, start_from, stop_after)
    preflight(params, str(params_path), notebooks)
    run_dir = Path(run_dir).expanduser().resolve() if run_dir else default_run_dir(params.common.run_name)
    kernel = kernel or default_kernel()
    with io.run_lock(run_dir):
        io.write_text(run_dir / "params.yaml", dump_params(params))
        _run_locked(params, notebooks, run_dir, params_path, kernel)
    return run_dir


def _run_locked(
    params: ExperimentParams, notebooks: list[str], run_dir: Path, params_path: str | Path, kernel: str
) -> None:
    """Execute `notebooks` in order, recording each in run.json and the report as it ends."""
    handler = _attach_log_file(run_dir / "run.log")
    record = _read_record(run_dir)
    record.update({"params_file": str(params_path), "git_sha": io.git_sha(), "kernel": kernel})
    record["plan"] = planned(params, record.get("plan"))
    io.write_json(run_dir / "run.json", record)
    try:
        for name in notebooks:
            log.info("running %s into %s", name, run_dir)
            started = time.perf_counter()
            entry = {"status": "running", "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
            record["notebooks"][name] = entry
            try:
                run_notebook(name, params, run_dir, kernel)
                entry["status"] = "ok"
            except NotebookFailed as failure:
                entry.update(status="failed", error=str(failure))
                log.error("%s", failure)
                raise
            finally:
                entry["seconds"] = round(time.perf_counter() - started, 1)
                io.write_json(run_dir / "run.json", record)
                write_report(run_dir, record, params)
            log.info("%s done in %.1f s", name, entry["seconds"])
    finally:
        for name in ("kdlib", "papermill"):
            logging.getLogger(name).removeHandler(handler)
        handler.close()


def planned(params: ExperimentParams, recorded: dict | None = None) -> dict:
    """kdlib.planner's estimate for the whole chain from scratch (Plan.summary, with the digest of the
    params it planned), logged as the run starts; `recorded`, the run's earlier plan, is kept when it
    planned the same params, so that a continued run neither plans again nor loses its first estimate. A
    planner that fails is logged and recorded, and the run goes on (it is an estimate)."""
    digest = params_digest(params)
    if recorded and recorded.get("params_sha256") == digest:
        log.info(
            "plan: about %s for notebooks 01-04 from scratch, as first planned",
            _minutes(recorded.get("estimated_seconds")),
        )
        return recorded
    try:
        summary = plan_params(params).summary()
    except Exception as error:  # noqa: BLE001 - an estimate must not stop the run it estimates
        log.warning("no plan: %s: %s", type(error).__name__, error)
        return {"error": f"{type(error).__name__}: {error}"}
    total = summary["estimated_seconds"]
    log.info("plan: about %s for notebooks 01-04 from scratch (kdlib plan for the details)", _minutes(total))
    for warning in summary["warnings"]:
        log.info("plan: %s", warning)
    return {**summary, "params_sha256": digest}


def _minutes(seconds: float | None) -> str:
    return "? min (a model is not calibrated)" if seconds is None else f"{seconds / 60:.0f} min"


def _read_record(run_dir: Path) -> dict:
    """run.json of an earlier (partial) run in the same folder, so that --from keeps its entries."""
    path = run_dir / "run.json"
    record = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    record.setdefault("notebooks", {})
    return record
