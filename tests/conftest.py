import logging
import os

import pytest

from kdlib.data.generated import generate_items
from tests.helpers import kdlib


@pytest.fixture(scope="session")
def generated_items():
    return generate_items(24, seed=3, split="train")


@pytest.fixture(scope="session")
def smoke_cache_env(tmp_path_factory):
    """A private kdlib cache (teacher generations, fingerprints): the smoke run starts cold."""
    return {**os.environ, "KDLIB_CACHE": str(tmp_path_factory.mktemp("kdlib-cache"))}


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, smoke_cache_env):
    """The whole chain on params/smoke.yaml, once per test session (test_smoke, test_browser)."""
    run_dir = tmp_path_factory.mktemp("smoke")
    kdlib("run", "params/smoke.yaml", "--run-dir", str(run_dir), env=smoke_cache_env)
    return run_dir


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(autouse=True)
def no_logged_deprecations():
    """transformers logs some deprecations instead of warning (`past_key_values`/`cache_params` are
    deprecated ...), and once per process: every test starts with that memory cleared, and fails if
    kdlib's calls make the library log one (Python's deprecation warnings are errors: pyproject.toml)."""
    if hasattr(logging.Logger, "warning_once"):  # set by transformers on import
        logging.Logger.warning_once.cache_clear()
    records = _Records()
    library = logging.getLogger("transformers")
    library.addHandler(records)
    try:
        yield
    finally:
        library.removeHandler(records)
    assert [m for m in records.messages if "deprecated" in m] == []
