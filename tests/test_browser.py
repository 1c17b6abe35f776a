"""In a real browser (Debian's chromium, driven by Playwright): each notebook opened and run in JupyterLab,
and a smoke run's report and notebook copies opened from disk with no network.

`make test` installs chromium with apt-get where it can; without it, or without Playwright, these tests
are skipped with the reason. Screenshots go to test-artifacts/browser/.
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import jupytext
import pytest

from kdlib.config import NOTEBOOKS
from kdlib.paths import NOTEBOOKS_DIR, REPO_ROOT

# Checked here, so that a skip comes before the session's smoke run, not after it.
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright (dev extra) is not installed")
CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Debian's chromium is not installed: `make test` installs it (apt-get install chromium) "
        "when it runs as root on a machine with apt",
    ),
]

SCREENSHOTS = REPO_ROOT / "test-artifacts" / "browser"
# Headless, and no background connections: this machine's closed network refuses them.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Per notebook: how many code cells to run from the top, and text the last one must show. 02-05 read
# the artifacts of the notebooks before them, so their run_dir is pointed at the smoke run; 01 runs on
# its own defaults.
FIRST_CELLS = {
    "01_teacher_traces": (3, "question_type"),
    "02_decomposition": (2, "items from ['generated']"),
    "03_sft": (2, "training items, trace format"),
    "04_evaluation": (2, "evaluation items;"),
    "05_correlation": (2, "greedy predictions of"),
}


@pytest.fixture(scope="module")
def browser():
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Lab:
    """A JupyterLab server on 127.0.0.1 with a token, serving a copy of notebooks/ and jupytext.toml,
    configured by the repository's jupyter-config/ exactly as `make lab` is."""

    def __init__(self, root, state):
        self.root, self.port, self.token = root, _free_port(), secrets.token_hex(16)
        env = {
            **os.environ,
            "JUPYTER_CONFIG_PATH": str(REPO_ROOT / "jupyter-config"),
            "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(state / "settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces"),
        }
        command = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={root}",
        ]
        self.log = (state / "lab.log").open("w")
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_until_up()

    def url(self, path: str) -> str:
        separator = "&" if "?" in path else "?"
        return f"http://127.0.0.1:{self.port}/{path}{separator}token={self.token}"

    def api(self, path: str, method: str = "GET"):
        with urllib.request.urlopen(urllib.request.Request(self.url(f"api/{path}"), method=method)) as reply:
            body = reply.read()
        return json.loads(body) if body else None

    def _wait_until_up(self, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"jupyter lab exited {self.process.returncode}; see {self.log.name}")
            try:
                self.api("status")
                return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"jupyter lab did not answer within {seconds:.0f} s; see {self.log.name}")

    def shut_down_kernels(self) -> None:
        for kernel in self.api("kernels"):
            self.api(f"kernels/{kernel['id']}", method="DELETE")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab-root")
    (root / "notebooks").mkdir()
    for name in NOTEBOOKS:
        shutil.copy(NOTEBOOKS_DIR / f"{name}.py", root / "notebooks")
    shutil.copy(REPO_ROOT / "jupytext.toml", root)
    server = Lab(root, tmp_path_factory.mktemp("lab-state"))
    yield server
    server.stop()


def _cells_through_code_cell(notebook: str, n_code: int) -> int:
    """How many cells (of every type) come up to and including the n_code-th code cell."""
    seen = 0
    for index, cell in enumerate(jupytext.read(NOTEBOOKS_DIR / f"{notebook}.py").cells):
        seen += cell.cell_type == "code"
        if seen == n_code:
            return index + 1
    raise AssertionError(f"{notebook} has fewer than {n_code} code cells")


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_opens_runs_and_saves_in_jupyterlab(notebook, browser, lab, smoke_run):
    source = lab.root / "notebooks" / f"{notebook}.py"
    original = source.read_text()
    n_code, expected = FIRST_CELLS[notebook]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(lab.url(f"lab/tree/notebooks/{notebook}.py?reset"))  # only this notebook open
        panel = page.locator(".jp-NotebookPanel")
        panel.locator(".jp-CodeCell").first.wait_for(timeout=60_000)  # opened as a notebook, not as text
        page.get_by_text("kdlib | Idle").wait_for(timeout=120_000)  # the notebook's own kernel
        edited = original
        if notebook != "01_teacher_traces":
            # an edit as a user makes it: the parameters cell's first line, run_dir, now the smoke run
            first_line = panel.locator(".jp-CodeCell").first.locator(".cm-line").first
            assert first_line.inner_text() == 'run_dir = "outputs/demo"'
            first_line.click()
            page.keyboard.press("Home")
            page.keyboard.press("Shift+End")
            page.keyboard.insert_text(f'run_dir = "{smoke_run}"')
            edited = original.replace('run_dir = "outputs/demo"', f'run_dir = "{smoke_run}"', 1)
        page.keyboard.press("Escape")
        panel.locator(".jp-Cell").first.click(position={"x": 4, "y": 4})
        for _ in range(_cells_through_code_cell(notebook, n_code)):
            page.keyboard.press("Shift+Enter")
        last = panel.locator(".jp-CodeCell").nth(n_code - 1)
        last.locator(f".jp-OutputArea-output:has-text({json.dumps(expected)})").wait_for(timeout=180_000)
        outputs = panel.locator(".jp-OutputArea").all_inner_texts()
        assert not any("Traceback" in text for text in outputs), outputs
        prompts = panel.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()[:n_code]
        assert all(prompt.strip() not in ("[ ]:", "[*]:") for prompt in prompts), prompts
        page.keyboard.press("Control+s")
        page.get_by_text("Saving completed").wait_for(timeout=30_000)
        page.screenshot(path=SCREENSHOTS / f"jupyterlab_{notebook}.png")
        assert source.read_text() == edited  # the edit, and nothing else, round-trips to the .py file
        assert list(source.parent.glob("*.ipynb")) == []  # no paired copy beside it
    finally:
        page.close()
        lab.shut_down_kernels()


def test_progress_bars_are_widgets_in_jupyterlab(browser, lab):
    """kdlib.progress by hand in JupyterLab: tqdm.auto's widget, drawn to the end."""
    scratch = jupytext.reads(
        "from kdlib.progress import progress\n\nfor _ in progress(range(3), desc='steps'):\n    pass\n",
        fmt="py:percent",
    )
    scratch.metadata["kernelspec"] = {"name": "kdlib", "display_name": "kdlib", "language": "python"}
    jupytext.write(scratch, lab.root / "progress.ipynb")
    page = browser.new_page(viewport={"width": 1400, "height": 700})
    try:
        page.goto(lab.url("lab/tree/progress.ipynb?reset"))
        page.locator(".jp-NotebookPanel .jp-CodeCell").first.wait_for(timeout=60_000)
        page.get_by_text("kdlib | Idle").wait_for(timeout=120_000)
        page.locator(".jp-NotebookPanel .jp-Cell").first.click(position={"x": 4, "y": 4})
        page.keyboard.press("Shift+Enter")
        bar = page.locator(".jp-OutputArea-output .widget-hbox:has(.widget-hprogress)")
        bar.filter(has_text="3/3").wait_for(timeout=120_000)
        assert "steps" in bar.inner_text() and "100%" in bar.inner_text()
        page.screenshot(path=SCREENSHOTS / "jupyterlab_progress_widget.png")
    finally:
        page.close()
        lab.shut_down_kernels()


def _open_offline(browser, path, screenshot):
    """Open `path` from disk with every network request refused; return (page, problems), where
    problems lists console errors, page errors and the network requests tried."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems = []
    page.on(
        "console", lambda message: message.type == "error" and problems.append(f"console: {message.text}")
    )
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    def refuse(route):
        problems.append(f"network: {route.request.url}")
        route.abort()

    page.route("http*://**", refuse)
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    figures = page.locator(".plotly-graph-div")
    for index in range(figures.count()):
        figures.nth(index).locator("svg.main-svg").first.wait_for(timeout=30_000)
    page.screenshot(path=SCREENSHOTS / screenshot, full_page=True)
    return page, problems


def test_report_and_notebook_copy_render_their_figures_offline(browser, smoke_run):
    for path, screenshot in [
        (smoke_run / "index.html", "report_index.png"),
        (smoke_run / "notebooks" / "04_evaluation.html", "notebook_04_evaluation.png"),
    ]:
        page, problems = _open_offline(browser, path, screenshot)
        try:
            n_figures = page.locator(".plotly-graph-div").count()
            assert n_figures >= 2, path
            assert page.locator(".plotly-graph-div svg.main-svg").count() >= n_figures
            assert problems == [], (path, problems)
        finally:
            page.close()
