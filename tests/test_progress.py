import io
import logging
import os

from kdlib.progress import PROGRESS_ENV, LogFormatter, progress
from kdlib.runner import KERNEL_ENVIRONMENT, kernel_environment


def test_progress_is_tqdm_auto_by_hand_and_text_every_n_seconds_under_kdlib_run(monkeypatch, capsys):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    assert progress(range(3), file=io.StringIO()).mininterval == 0.1  # tqdm.auto's default bar
    monkeypatch.setenv(PROGRESS_ENV, "7")
    bar = progress(range(3), desc="steps")
    assert bar.mininterval == 7.0 and list(bar) == [0, 1, 2]
    assert "steps: 100%|" in capsys.readouterr().err


def test_log_formatter_keeps_each_lines_last_frame():
    frames = "\rtrain:  50%\rtrain: 100%\n"
    record = logging.LogRecord("papermill", logging.WARNING, __file__, 1, frames, (), None)
    assert LogFormatter("%(levelname)s %(message)s").format(record) == "WARNING train: 100%"
    record.msg = "a\rb\nc"
    assert LogFormatter("%(message)s").format(record) == "b\nc"


def test_kernel_environment_sets_what_is_unset_and_restores(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    with kernel_environment():
        assert os.environ[PROGRESS_ENV] == KERNEL_ENVIRONMENT[PROGRESS_ENV]
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"  # a user's own setting wins
    assert PROGRESS_ENV not in os.environ and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"
