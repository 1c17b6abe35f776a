"""The bad-params corpus: every file in tests/bad_params/ has one defect, and `kdlib run` on it prints one
line naming the file and the key, exits with status 2 and writes nothing.

Each corpus file starts with `# expect: <key> | <fragment>`: the dotted key the error names (as
`key '<key>'`) and a piece of its message. Three keys are not params keys: `<root>` is the whole document
(not a mapping, or empty), `<yaml>` marks text that is not valid YAML, whose error names the line and
column instead of a key, and `<file>` a file that is not UTF-8 text at all. The one file that cannot hold
the line, the empty `empty.yaml`, expects `<root> | params file is empty`.

Some defects are found by kdlib.preflight rather than the schema: they need this machine (a CUDA device,
which the test hides), the data (msmarco-sample is generated offline, so no data directory is needed) or a
student's config (tiny models, and the packaged SmolLM2's GGUF header).
"""

import subprocess
import sys
from pathlib import Path

import pytest

from kdlib.cli import main
from kdlib.paths import OUTPUTS_DIR

CORPUS = sorted((Path(__file__).parent / "bad_params").glob("*.yaml"))
EMPTY_FILE_EXPECTATION = ("<root>", "params file is empty")


def expectation(path: Path) -> tuple[str, str]:
    """(key, message fragment) from the file's `# expect: <key> | <fragment>` first line."""
    data = path.read_bytes()
    if not data:
        return EMPTY_FILE_EXPECTATION
    first = data.split(b"\n", 1)[0].decode("utf-8")
    assert first.startswith("# expect: "), f"{path.name}: no '# expect:' line"
    key, fragment = first.removeprefix("# expect: ").split(" | ", 1)
    return key, fragment


def check_error_line(stderr: str, path: Path) -> None:
    key, fragment = expectation(path)
    assert len(stderr.splitlines()) == 1, stderr
    assert str(path) in stderr
    if key == "<yaml>":
        assert "not valid YAML: line " in stderr and ", column " in stderr
    elif key != "<file>":
        assert f"key '{key}'" in stderr
    assert fragment in stderr


def test_corpus_is_large_and_readme_counts_it():
    assert len(CORPUS) >= 100
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert f"`tests/bad_params/` holds {len(CORPUS)} such files" in " ".join(readme.split())


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_bad_params_fail_in_one_line_and_write_nothing(path, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("kdlib.paths.OUTPUTS_DIR", tmp_path / "outputs")
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # the corpus describes a CPU machine
    monkeypatch.delenv("KDLIB_BAD_PARAMS_UNSET_KEY", raising=False)
    status = main(["run", str(path), "--run-dir", str(tmp_path / "run")])
    assert status == 2
    check_error_line(capsys.readouterr().err, path)
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()


def run_folders() -> list[str]:
    """Top-level names under outputs/ (other jobs may write inside existing run folders)."""
    return sorted(p.name for p in OUTPUTS_DIR.iterdir()) if OUTPUTS_DIR.exists() else []


def test_bad_params_exit_status_of_the_command(tmp_path):
    """The real command, not main(): its exit status, and no new run folder (run_name is unique)."""
    path = Path(__file__).parent / "bad_params" / "negative_n_train.yaml"
    before = run_folders()
    done = subprocess.run(
        [sys.executable, "-m", "kdlib", "run", str(path)], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 2
    check_error_line(done.stderr, path)
    assert run_folders() == before and not (OUTPUTS_DIR / "bad-params-negative-n-train").exists()
    assert not any(tmp_path.iterdir())
