"""Teacher backends behind one interface: local transformers, any OpenAI-compatible HTTP server, vLLM.

A backend turns conversations (lists of chat messages) into completions. It loads or connects lazily, on
the first request, so that a run whose generations are all cached never touches a model. `identity()`
names what produced a completion (backend, model, revision or weight hash) and is part of every cache key.
"""

from __future__ import annotations

import json
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from typing import Any, Literal

from kdlib.likelihood import iter_loglikelihoods
from kdlib.models import (
    cut_at_stop,
    iter_generate,
    load_model,
    model_fingerprint,
    preferred_dtype,
    render_messages,
    resolve_device,
    resolve_pretrained,
)
from kdlib.progress import progress

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}
Endpoint = Literal["chat", "completions"]


@dataclass(frozen=True)
class Decoding:
    """Decoding settings shared by every backend; all of them are part of the cache key."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    # Set: no text is generated. The reply is choice_reply JSON: each choice's probability of being the
    # whole reply (backends with scores_choices only).
    choices: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Left out while empty, so cache keys written before `choices` existed still match."""
        fields = {**asdict(self), "stop": list(self.stop), "choices": list(self.choices)}
        return fields if self.choices else {k: v for k, v in fields.items() if k != "choices"}


@dataclass(frozen=True)
class Request:
    """One completion to make: a conversation, and which sample of it (0, 1, ...) this is."""

    messages: tuple[tuple[str, str], ...]  # (role, content) pairs
    sample: int = 0

    @classmethod
    def of(cls, messages: list[Message], sample: int = 0) -> Request:
        return cls(tuple((m["role"], m["content"]) for m in messages), sample)

    def message_dicts(self) -> list[Message]:
        return [{"role": role, "content": content} for role, content in self.messages]


def flatten_messages(messages: list[Message]) -> str:
    """A conversation as one plain prompt for completion endpoints and base models.

    A single user turn is used as it is; longer conversations become "User: ... / Assistant: ..." lines
    ending with "Assistant:".
    """
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join([*lines, "Assistant:"])


def valid_utf8(text: str) -> str:
    """`text` with lone surrogates (undecodable bytes smuggled through JSON) as U+FFFD, so that it can be
    stored; the teacher stage then records the row as unparseable."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def choice_reply(logprobs: dict[str, float]) -> str:
    """The reply to a request with Decoding.choices, from each choice's log-probability: JSON with
    "probabilities" (renormalised over the choices) and "mass" (their total before renormalising)."""
    top = max(logprobs.values())
    relative = {choice: math.exp(value - top) for choice, value in logprobs.items()}  # no underflow
    total = sum(relative.values())
    probabilities = {choice: value / total for choice, value in relative.items()}
    return json.dumps({"probabilities": probabilities, "mass": math.exp(top) * total})


class Backend(ABC):
    """Generates completions for requests; `calls` counts the completions it actually produced."""

    kind: str
    scores_choices = False  # whether it can answer requests with Decoding.choices

    def __init__(self, endpoint: Endpoint = "chat") -> None:
        self.endpoint = endpoint
        self.calls = 0

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """What produced a completion: backend kind, model id and its revision or weight hash."""

    @abstractmethod
    def _stream(self, requests: list[Request], decoding: Decoding) -> Iterator[list[tuple[int, str]]]:
        """Completions as they arrive, in chunks of (request index, text)."""

    def stream(self, requests: list[Request], decoding: Decoding) -> Iterator[list[tuple[int, str]]]:
        if decoding.choices and not self.scores_choices:
            raise ValueError(
                f"the {self.kind} backend cannot score reply choices (Decoding.choices); use transformers"
            )
        for chunk in self._stream(requests, decoding):
            self.calls += len(chunk)
            yield [(index, valid_utf8(text or "")) for index, text in chunk]

    def close(self) -> None:  # noqa: B027 (optional hook: backends without resources keep the no-op)
        """Free the model or connection (a later request loads it again)."""


class TransformersBackend(Backend):
    """A local causal LM through `transformers`, batched with left padding; bf16 where the hardware has it."""

    kind = "transformers"
    scores_choices = True

    def __init__(
        self,
        model: str,
        *,
        endpoint: Endpoint = "chat",
        device: str = "auto",
        dtype: Literal["auto", "float32", "bfloat16"] = "auto",
        batch_size: int = 8,
        revision: str | None = None,
        seed: int = 0,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__(endpoint)
        self.model_name, self.device, self.dtype_name = model, device, dtype
        self.batch_size, self.revision, self.seed = batch_size, revision, seed
        self.trust_remote_code = trust_remote_code
        self._loaded: tuple[Any, Any] | None = None
        self._identity: dict[str, Any] | None = None

    def identity(self) -> dict[str, Any]:
        """Includes the resolved dtype: bf16 and fp32 weights write different completions."""

        if self._identity is None:
            self._identity = {
                "backend": self.kind,
                "model": self.model_name,
                "weights": model_fingerprint(self.model_name, revision=self.revision, seed=self.seed),
                "dtype": str(preferred_dtype(resolve_device(self.device), self.dtype_name)),
            }
        return self._identity

    def _model(self) -> tuple[Any, Any]:
        if self._loaded is None:
            device = resolve_device(self.device)
            self._loaded = load_model(
                self.model_name,
                device=device,
                dtype=preferred_dtype(device, self.dtype_name),
                seed=self.seed,
                trust_remote_code=self.trust_remote_code,
            )
        return self._loaded

    def prompt_text(self, request: Request) -> str:
        model, tokenizer = self._model()
        if self.endpoint == "chat":
            return render_messages(tokenizer, request.message_dicts())
        return (tokenizer.bos_token or "") + flatten_messages(request.message_dicts())

    def _stream(self, requests: list[Request], decoding: Decoding) -> Iterator[list[tuple[int, str]]]:
        if decoding.choices:
            yield from self._score_choices(requests, decoding.choices)
            return
        model, tokenizer = self._model()
        yield from iter_generate(
            model,
            tokenizer,
            [self.prompt_text(r) for r in requests],
            max_new_tokens=decoding.max_new_tokens,
            batch_size=self.batch_size,
            temperature=decoding.temperature,
            top_p=decoding.top_p,
            stop=decoding.stop,
            seed=decoding.seed,
            row_seeds=[decoding.seed + r.sample for r in requests],
            desc=f"teacher {self.model_name}",
        )

    def _score_choices(
        self, requests: list[Request], choices: tuple[str, ...]
    ) -> Iterator[list[tuple[int, str]]]:
        """choice_reply per request, yielded as each request's choices are scored (one forward pass of
        its prompt when every choice is a single token)."""

        model, tokenizer = self._model()
        pairs = [(self.prompt_text(request), choice) for request in requests for choice in choices]
        scored: dict[int, dict[str, float]] = {}
        for index, result in iter_loglikelihoods(
            model, tokenizer, pairs, batch_size=self.batch_size, desc=f"score {self.model_name}"
        ):
            request, choice = divmod(index, len(choices))
            scored.setdefault(request, {})[choices[choice]] = result.logprob
            if len(scored[request]) == len(choices):
                logprobs = scored.pop(request)
                yield [(request, choice_reply({c: logprobs[c] for c in choices}))]

    def close(self) -> None:
        self._loaded = None


class OpenAIBackend(Backend):
    """Any OpenAI-compatible server (vLLM, llama.cpp server, hosted APIs) through the `openai` client.

    The API key is read from the environment variable named `api_key_env` when the first request is made;
    it is never stored on the backend, in a cache key or in any file. Requests run `max_concurrency` at a
    time, and each sample is a separate request with its own seed, so that servers batch them.
    """

    kind = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key_env: str | None = None,
        endpoint: Endpoint = "chat",
        max_concurrency: int = 8,
        revision: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 2,
    ) -> None:
        super().__init__(endpoint)
        self.model_name, self.base_url, self.api_key_env = model, base_url, api_key_env
        self.max_concurrency, self.revision = max_concurrency, revision
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self._client: Any = None

    def identity(self) -> dict[str, Any]:
        return {"backend": self.kind, "model": self.model_name, "revision": self.revision}

    def _api_key(self) -> str:
        if self.api_key_env is None:
            return "not-needed"  # local servers started without a key ignore it; the client wants one
        key = os.environ.get(self.api_key_env)
        if not key:
            raise KeyError(f"teacher.api_key_env names ${self.api_key_env}, which is not set or empty")
        return key

    def client(self) -> Any:
        from openai import OpenAI  # optional: only the openai backend needs the client

        if self._client is None:
            self._client = OpenAI(
                base_url=self.base_url,
                api_key=self._api_key(),
                timeout=self.timeout_s,
                max_retries=self.max_retries,
            )
        return self._client

    def complete(self, request: Request, decoding: Decoding) -> str:
        common = {
            "model": self.model_name,
            "max_tokens": decoding.max_new_tokens,
            "temperature": decoding.temperature,
            "top_p": decoding.top_p,
            "seed": decoding.seed + request.sample,
            "stop": list(decoding.stop) or None,
        }
        if self.endpoint == "chat":
            response = self.client().chat.completions.create(messages=request.message_dicts(), **common)
            text = response.choices[0].message.content or ""
        else:
            prompt = flatten_messages(request.message_dicts())
            text = self.client().completions.create(prompt=prompt, **common).choices[0].text
        return cut_at_stop(text, decoding.stop).strip()

    def _stream(self, requests: list[Request], decoding: Decoding) -> Iterator[list[tuple[int, str]]]:
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = {pool.submit(self.complete, r, decoding): i for i, r in enumerate(requests)}
            try:
                for future in progress(
                    as_completed(futures), total=len(futures), desc=f"teacher {self.model_name}"
                ):
                    yield [(futures[future], future.result())]
            finally:
                for future in futures:
                    future.cancel()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None


class VLLMBackend(Backend):
    """vLLM in-process (GPU machines with `vllm` installed); requests are handed over in chunks."""

    kind = "vllm"

    def __init__(
        self,
        model: str,
        *,
        endpoint: Endpoint = "chat",
        revision: str | None = None,
        seed: int = 0,
        chunk_size: int = 256,
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__(endpoint)
        self.model_name, self.revision, self.seed = model, revision, seed
        self.chunk_size, self.dtype, self.trust_remote_code = chunk_size, dtype, trust_remote_code
        self._llm: Any = None

    def identity(self) -> dict[str, Any]:
        return {
            "backend": self.kind,
            "model": self.model_name,
            "weights": model_fingerprint(self.model_name, revision=self.revision, seed=self.seed),
        }

    def _engine(self) -> Any:
        try:
            from vllm import LLM  # optional, GPU only: imported when a vllm backend starts
        except ImportError:
            raise ImportError(
                "teacher.backend 'vllm' needs the vllm package on a GPU machine (pip install vllm); "
                "or serve the model with `vllm serve` and use backend 'openai'"
            ) from None

        if self._llm is None:
            self._llm = LLM(
                model=resolve_pretrained(self.model_name),
                revision=self.revision,
                seed=self.seed,
                dtype=self.dtype,
                load_format="safetensors",
                trust_remote_code=self.trust_remote_code,
            )
        return self._llm

    def _stream(self, requests: list[Request], decoding: Decoding) -> Iterator[list[tuple[int, str]]]:
        from vllm import SamplingParams  # optional, as in _engine

        llm = self._engine()
        for start in range(0, len(requests), self.chunk_size):
            chunk = requests[start : start + self.chunk_size]
            params = [
                SamplingParams(
                    max_tokens=decoding.max_new_tokens,
                    temperature=decoding.temperature,
                    top_p=decoding.top_p,
                    stop=list(decoding.stop) or None,
                    seed=decoding.seed + r.sample,
                )
                for r in chunk
            ]
            if self.endpoint == "chat":
                outputs = llm.chat([r.message_dicts() for r in chunk], params, use_tqdm=True)
            else:
                outputs = llm.generate([flatten_messages(r.message_dicts()) for r in chunk], params)
            yield [(start + i, out.outputs[0].text.strip()) for i, out in enumerate(outputs)]

    def close(self) -> None:
        self._llm = None
