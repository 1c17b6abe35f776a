"""Progress bars that show in JupyterLab and in a papermill log alike.

Run by hand in JupyterLab, a notebook gets tqdm.auto's widget bars. A widget reaches a papermill log only
as its first, empty frame, so `kdlib run` sets $KDLIB_PROGRESS_SECONDS for the kernels it starts: there
the bars are plain text on stderr, redrawn at most every that many seconds. papermill logs each redraw
and the executed notebook keeps the last.
"""

from __future__ import annotations

import logging
import os
import sys

from tqdm.auto import tqdm as auto_tqdm
from tqdm.std import tqdm as text_tqdm

PROGRESS_ENV = "KDLIB_PROGRESS_SECONDS"


def progress(iterable=None, **kwargs):
    """A tqdm bar over `iterable` (tqdm's keyword arguments: total, desc, unit, initial, disable...)."""
    seconds = os.environ.get(PROGRESS_ENV)
    if seconds is None:
        return auto_tqdm(iterable, **kwargs)
    return text_tqdm(iterable, mininterval=float(seconds), file=sys.stderr, ncols=100, **kwargs)


class LogFormatter(logging.Formatter):
    """Logs a redrawn text bar as its last frame: each message line's text after its last carriage return."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        lines = record.message.rstrip().split("\n")
        record.message = "\n".join(line.rsplit("\r", 1)[-1] for line in lines)
        return super().formatMessage(record)
