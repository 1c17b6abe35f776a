"""Teacher stage on the tiny model: backend batching, the generation cache, recipes, label parsing, leaks."""

import contextlib
import json
import math
import sqlite3

import numpy as np
import pytest

from kdlib.data.schema import QAItem
from kdlib.likelihood import loglikelihoods
from kdlib.teacher import recipes
from kdlib.teacher.backends import (
    Backend,
    Decoding,
    Request,
    TransformersBackend,
    choice_reply,
    flatten_messages,
)
from kdlib.teacher.cache import GenerationCache, generate_cached, request_key
from kdlib.teacher.rationales import (
    MAX_COMPLETION_CHARS,
    filter_traces,
    leak_spans,
    match_choice,
    split_label_first,
    split_label_last,
    strip_restated_label,
    trace_row,
    traces_frame,
)

MC_ITEM = QAItem(
    "q1", "commonsenseqa", "train", "Where would a bum live?", "bridge",
    choices=["park", "bridge", "train station", "house", "office"],
)  # fmt: skip


def texts_of(backend, requests, decoding):
    """{request index: text} from a backend's stream."""
    return dict(pair for chunk in backend.stream(requests, decoding) for pair in chunk)


def tiny_backend(batch_size=4, endpoint="completions"):
    """The tiny model repeats a prompt's last character (tied embeddings), so plain prompts that end in
    different letters give different, non-empty texts; chat prompts end in a newline and give ""."""
    return TransformersBackend(
        "tiny-llama", device="cpu", dtype="float32", batch_size=batch_size, endpoint=endpoint
    )


def requests_for(texts, sample=0):
    return [Request.of([{"role": "user", "content": t}], sample) for t in texts]


QUESTIONS = ["Where is Mary", "Is Bill in the park", "How many objects is Fred carrying", "Why not", "Who is"]
DECODING = Decoding(max_new_tokens=6)


# --- backends -----------------------------------------------------------------------------------------


def test_transformers_backend_batched_equals_one_at_a_time():
    batched = texts_of(tiny_backend(4), requests_for(QUESTIONS), DECODING)
    single = texts_of(tiny_backend(1), requests_for(QUESTIONS), DECODING)
    assert batched == single
    assert batched[0] == "yyyyyy" and batched[3] == "tttttt"


def test_transformers_backend_stop_strings_and_sampling():
    backend = tiny_backend()
    greedy = texts_of(backend, requests_for(QUESTIONS), Decoding(max_new_tokens=12))
    stop = "kkk"
    cut = texts_of(backend, requests_for(QUESTIONS), Decoding(max_new_tokens=12, stop=(stop,)))
    assert greedy[1] == "k" * 12 and cut[1] == ""
    assert all(stop not in text for text in cut.values()) and cut[0] == greedy[0]
    sampled = [texts_of(backend, requests_for(QUESTIONS), Decoding(12, 1.5, 0.95, seed=s)) for s in (1, 2)]
    assert sampled[0] != sampled[1] and sampled[0] != greedy


def test_flatten_messages_for_completion_endpoints():
    assert flatten_messages([{"role": "user", "content": "Q?"}]) == "Q?"
    turns = [("system", "S"), ("user", "Q"), ("assistant", "A")]
    flat = flatten_messages([{"role": role, "content": text} for role, text in turns])
    assert flat == "System: S\n\nUser: Q\n\nAssistant: A\n\nAssistant:"


# --- cache --------------------------------------------------------------------------------------------


def test_rerun_makes_zero_model_calls_and_never_loads_the_model(tmp_path):
    with GenerationCache(tmp_path / "c.sqlite") as cache:
        first = generate_cached(tiny_backend(), cache, requests_for(QUESTIONS), DECODING)
        assert cache.stats.as_dict() == {"hits": 0, "misses": len(QUESTIONS)}
    rerun_backend = tiny_backend()
    with GenerationCache(tmp_path / "c.sqlite") as cache:
        again = generate_cached(rerun_backend, cache, requests_for(QUESTIONS), DECODING)
        assert cache.stats.as_dict() == {"hits": len(QUESTIONS), "misses": 0}
    assert again == first
    assert rerun_backend.calls == 0 and rerun_backend._loaded is None


def test_cache_key_covers_model_prompt_decoding_and_sample():
    backend = tiny_backend()
    (request,) = requests_for(["Where is Mary?"])
    key = request_key(backend, request, DECODING)
    assert key == request_key(tiny_backend(), request, DECODING)
    assert key != request_key(backend, requests_for(["Where is Bill?"])[0], DECODING)
    assert key != request_key(backend, request, Decoding(max_new_tokens=7))
    assert key != request_key(backend, request, Decoding(max_new_tokens=6, stop=(".",)))
    other_model = TransformersBackend(
        "tiny-llama", device="cpu", dtype="float32", seed=1, endpoint="completions"
    )
    assert key != request_key(other_model, request, DECODING)
    bf16 = TransformersBackend("tiny-llama", device="cpu", dtype="bfloat16", endpoint="completions")
    assert key != request_key(bf16, request, DECODING)
    # samples share the key and are told apart by their index (see the table's primary key)
    assert key == request_key(backend, requests_for(["Where is Mary?"], sample=3)[0], DECODING)


class Interrupted(Exception):
    pass


class CrashingBackend(TransformersBackend):
    """Dies after its first chunk of completions, like a run killed part-way."""

    def _stream(self, requests, decoding):
        for n, chunk in enumerate(super()._stream(requests, decoding)):
            if n == 1:
                raise Interrupted
            yield chunk


def test_interrupted_run_resumes_without_lost_or_duplicated_rows(tmp_path):
    prompts = requests_for(QUESTIONS + [q + " Explain." for q in QUESTIONS])
    with GenerationCache(tmp_path / "c.sqlite") as cache, pytest.raises(Interrupted):
        crashing = CrashingBackend(
            "tiny-llama", device="cpu", dtype="float32", batch_size=3, endpoint="completions"
        )
        generate_cached(crashing, cache, prompts, DECODING)
    with GenerationCache(tmp_path / "c.sqlite") as cache:
        assert len(cache) == 3  # the first chunk was committed as it arrived
        resumed_backend = tiny_backend(3)
        resumed = generate_cached(resumed_backend, cache, prompts, DECODING)
        assert resumed_backend.calls == len(prompts) - 3
        assert len(cache) == len(prompts)
    with GenerationCache(tmp_path / "fresh.sqlite") as cache:
        assert generate_cached(tiny_backend(3), cache, prompts, DECODING) == resumed
    rows = sqlite3.connect(tmp_path / "c.sqlite").execute("SELECT key, sample FROM generations").fetchall()
    assert len(rows) == len(set(rows)) == len(prompts)


def test_identical_requests_in_one_call_are_generated_once(tmp_path):
    backend = tiny_backend()
    with GenerationCache(tmp_path / "c.sqlite") as cache:
        texts = generate_cached(backend, cache, requests_for(["Same?", "Same?", "Other?"]), DECODING)
    assert backend.calls == 2 and texts[0] == texts[1]


# --- recipes ------------------------------------------------------------------------------------------


def test_recipes_write_rows_for_every_item_and_sample(tmp_path, generated_items):
    exemplars = recipes.exemplars_from_items(generated_items[:2])
    asked = generated_items[2:5]
    backend = tiny_backend()
    decoding = Decoding(max_new_tokens=8, temperature=1.0, top_p=0.9)
    with GenerationCache(tmp_path / "c.sqlite") as cache:
        frames = {
            name: recipes.generate_rationales(
                name, asked, exemplars, backend, cache, decoding, samples=2, model_name="tiny-llama"
            )
            for name in ["cot_label_last", "label_first", "rationalize", "critique_revision"]
        }
        # critique_revision: the first stage is rationalize's request (cached), then critique + revision
        assert cache.stats.hits == 2 * len(asked)
    for name, frame in frames.items():
        assert len(frame) == 2 * len(asked), name
        assert sorted(frame["sample"]) == [0, 0, 0, 1, 1, 1]
        assert set(frame["prompt_id"]) == {f"{name}/v1"}
    conditioned = frames["rationalize"]
    assert (conditioned["parsed_label"] == conditioned["gold_label"]).all()
    assert (conditioned["label_source"] == "conditioned").all()
    assert frames["critique_revision"]["critique"].notna().all()
    assert frames["cot_label_last"]["target_label"].isna().all()


def test_counterfactual_recipe_explains_each_wrong_choice(tmp_path):
    backend = tiny_backend()
    with GenerationCache(tmp_path / "c.sqlite") as cache:
        frame = recipes.generate_rationales(
            "counterfactual", [MC_ITEM], [], backend, cache, DECODING, model_name="tiny-llama"
        )
    assert sorted(frame["target_label"]) == ["house", "office", "park", "train station"]
    assert not frame["label_correct"].any()
    ask = recipes.rationalize_messages(MC_ITEM, [], "park")[-1]["content"]
    assert ask.endswith("Answer: park") and "(b) bridge" in ask


def test_prompts_never_show_the_gold_label_of_the_asked_item(generated_items):
    exemplars = recipes.exemplars_from_items(generated_items[:2])
    for item in generated_items[2:10]:
        for build in (recipes.cot_label_last_messages, recipes.label_first_messages):
            asked = build(item, exemplars)[-1]["content"]
            assert "answer is" not in asked.lower() and asked.startswith("Facts:")


def test_exemplars_need_gold_facts_or_a_file(tmp_path):
    with pytest.raises(ValueError, match="n_shots to 0 or give generation.exemplars_file"):
        recipes.exemplars_from_items([MC_ITEM])
    good = tmp_path / "ex.yaml"
    good.write_text('- {question: "Which?", answer: b, rationale: Because., choices: [a, b]}\n')
    (ex,) = recipes.load_exemplars(good)
    assert ex.choices == ("a", "b")
    bad = tmp_path / "bad.yaml"
    bad.write_text('- {question: "Which?", answer: b, why: x}\n')
    message = r"bad.yaml: exemplar 1: unknown keys \['why'\], missing keys \['rationale'\]"
    with pytest.raises(ValueError, match=message):
        recipes.load_exemplars(bad)
    bad.write_text("- {question: Q?, answer: b}\n")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        recipes.load_exemplars(bad)


# --- label parsing, leaks, filters ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("bridge", "bridge"),
        ("(b)", "bridge"),
        ("(b) bridge", "bridge"),
        ("B", "bridge"),
        ("(B) Bridges", "bridge"),
        ("Train Station", "train station"),
        ("(a) park or (b) bridge", None),
        ("castle", None),
        ("(z)", None),
    ],
)
def test_match_choice(label, expected):
    assert match_choice(label, MC_ITEM.choices) == expected


def test_split_label_last_and_first():
    assert split_label_last("Bums sleep under bridges. So the answer is (b) bridge.", MC_ITEM) == (
        "Bums sleep under bridges.",
        "bridge",
    )
    assert split_label_last("No idea at all.", MC_ITEM) == ("No idea at all.", None)
    assert split_label_first("The answer is bridge because bums sleep there.", MC_ITEM) == (
        "Bums sleep there.",
        "bridge",
    )
    assert strip_restated_label("The answer is bridge. Bums sleep there.", "bridge") == "Bums sleep there."


def test_leak_spans_find_label_text_plurals_and_letters():
    text = "Bums sleep under Bridges; option b fits, as does (b). A bridgehead does not count."
    spans = leak_spans(text, "bridge", MC_ITEM.choices)
    assert [text[a:b] for a, b in spans] == ["Bridges", "option b", "(b)"]
    assert leak_spans("Bums sleep outside.", "bridge", MC_ITEM.choices) == []


def test_filters_report_what_each_dropped():
    def row(rationale, label):
        return trace_row(
            MC_ITEM, source="llm", model="m", prompt_id="p/v1", recipe="cot_label_last",
            rationale=rationale, completion=rationale, parsed_label=label, label_source="parsed",
        )  # fmt: skip

    rationales = [
        ("Bums sleep outside.", "bridge"),
        ("bums  sleep outside.", "bridge"),  # a duplicate after whitespace and case folding
        ("Parks are open.", "park"),  # a wrong label
        ("A bridge is shelter.", "bridge"),  # states its label
    ]
    traces = traces_frame([row(*r) for r in rationales])
    traces = traces_frame([row(*r) for r in rationales])
    kept, report = filter_traces(
        traces, drop_unparseable=True, keep_label_correct=True, drop_duplicates=True, drop_leaking=True
    )
    assert list(kept["rationale"]) == ["Bums sleep outside."]
    counts = ["rows_in", "dropped_label_wrong", "dropped_duplicate", "dropped_leaking", "rows_kept"]
    assert report.iloc[0][counts].tolist() == [4, 1, 1, 1, 1]


class ScriptedBackend(Backend):
    """Returns fixed texts in order, as a misbehaving server might."""

    kind = "scripted"

    def __init__(self, texts):
        super().__init__("chat")
        self.texts = texts

    def identity(self):
        return {"kind": self.kind}

    def _stream(self, requests, decoding):
        yield list(enumerate(self.texts[: len(requests)]))


def test_bad_teacher_outputs_are_recorded_as_unparseable_and_filtered(tmp_path):
    huge = "Bridges shelter people. " * 2000 + "So the answer is bridge."
    outputs = {
        "empty": "",
        "none": None,
        "huge": huge,
        "surrogate": "Bums sleep under bridges \udcff\udcfe. So the answer is bridge.",
        "replacement": "Bums sleep \ufffd there. So the answer is bridge.",
        "no_answer": "Bums sleep under bridges.",
        "answer_only": "So the answer is bridge.",
        "good": "Bums sleep under bridges. So the answer is bridge.",
    }
    items = [QAItem(name, "commonsenseqa", "train", f"{MC_ITEM.question} ({name})", "bridge",
                    choices=MC_ITEM.choices) for name in outputs]  # fmt: skip
    with GenerationCache(tmp_path / "c.sqlite") as cache:
        rows = recipes.generate_rationales(
            "cot_label_last", items, [], ScriptedBackend(list(outputs.values())), cache, DECODING,
            model_name="scripted",
        )  # fmt: skip
        assert len(cache) == len(outputs)  # every output, however bad, is stored and never asked again
    reasons = dict(zip(rows["item_id"], rows["unparseable"].fillna("usable"), strict=True))
    assert reasons == {
        "empty": "empty",
        "none": "empty",
        "huge": f"too long ({len(huge)} characters > {MAX_COMPLETION_CHARS})",
        "surrogate": "not valid UTF-8",
        "replacement": "not valid UTF-8",
        "no_answer": "no answer",
        "answer_only": "no reasoning",
        "good": "usable",
    }
    huge_row = rows.set_index("item_id").loc["huge"]
    assert huge_row["rationale"] == "" and len(huge_row["completion"]) == MAX_COMPLETION_CHARS
    rows.to_parquet(tmp_path / "traces.parquet")  # storable: no lone surrogates left
    kept, report = filter_traces(
        rows, drop_unparseable=True, keep_label_correct=False, drop_duplicates=True, drop_leaking=False
    )
    assert kept["item_id"].tolist() == ["good"]
    assert report.iloc[0][["rows_in", "dropped_unparseable", "rows_kept"]].tolist() == [8, 7, 1]


KILLED_RUN = """
import sys
from kdlib.teacher.backends import Decoding, Request, TransformersBackend
from kdlib.teacher.cache import GenerationCache, generate_cached
requests = [Request.of([{"role": "user", "content": f"Question {i} is"}]) for i in range(40)]
backend = TransformersBackend("tiny-llama", device="cpu", batch_size=1, endpoint="completions")
with GenerationCache(sys.argv[1]) as cache:
    generate_cached(backend, cache, requests, Decoding(max_new_tokens=200))
"""


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkilled_run_keeps_committed_rows_and_resumes(tmp_path, seed):
    """Generation in a real subprocess, SIGKILLed at a random point: the resumed cache holds each
    completion once, and the texts equal those of an uninterrupted run."""
    import random
    import signal
    import subprocess
    import sys
    import time

    rng = random.Random(seed)
    kill_after_rows, delay = rng.randint(1, 8), rng.uniform(0.0, 0.3)
    path = tmp_path / "c.sqlite"
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(path)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    committed = 0
    while committed < kill_after_rows and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
        if not path.exists():
            continue
        with contextlib.suppress(sqlite3.OperationalError), contextlib.closing(sqlite3.connect(path)) as db:
            committed = db.execute("SELECT COUNT(*) FROM generations").fetchone()[0]  # once the table is made
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run should be killed part-way"
    requests = [Request.of([{"role": "user", "content": f"Question {i} is"}]) for i in range(40)]
    decoding = Decoding(max_new_tokens=200)
    with GenerationCache(path) as cache:
        survived = len(cache)
        assert kill_after_rows <= survived < 40
        backend = TransformersBackend("tiny-llama", device="cpu", batch_size=8, endpoint="completions")
        texts = generate_cached(backend, cache, requests, decoding)
        assert backend.calls == 40 - survived and len(cache) == 40 and all(texts)
    rows = sqlite3.connect(path).execute("SELECT key, sample FROM generations").fetchall()
    assert len(rows) == len(set(rows)) == 40
    with GenerationCache(tmp_path / "whole.sqlite") as cache:
        assert generate_cached(tiny_backend(8), cache, requests, decoding) == texts


def test_trust_remote_code_comes_only_from_the_params():
    from kdlib.config import TeacherParams
    from kdlib.teacher.stage import make_backend

    assert make_backend(TeacherParams(), device="cpu", seed=0).trust_remote_code is False
    trusted = TeacherParams(trust_remote_code=True)
    assert make_backend(trusted, device="cpu", seed=0).trust_remote_code is True


def test_choice_scoring_gives_each_choice_its_probability_as_the_reply():
    backend = tiny_backend(batch_size=2, endpoint="chat")
    requests = requests_for(QUESTIONS)
    replies = texts_of(backend, requests, Decoding(max_new_tokens=1, choices=("1", "2", "yes")))
    model, tokenizer = backend._model()
    for index, request in enumerate(requests):
        reply = json.loads(replies[index])
        pairs = [(backend.prompt_text(request), choice) for choice in ("1", "2", "yes")]
        logprobs = np.array([r.logprob for r in loglikelihoods(model, tokenizer, pairs, batch_size=1)])
        assert list(reply["probabilities"]) == ["1", "2", "yes"]
        probabilities = np.exp(logprobs)
        expected = probabilities / probabilities.sum()  # batched with other prompts: padding float noise
        np.testing.assert_allclose(list(reply["probabilities"].values()), expected, rtol=1e-4)
        assert reply["mass"] == pytest.approx(probabilities.sum(), rel=1e-4)
    assert backend.calls == len(QUESTIONS)


def test_choice_reply_survives_improbable_choices():
    reply = json.loads(choice_reply({"1": -2000.0, "2": -2000.0 + math.log(3)}))
    assert reply["probabilities"] == pytest.approx({"1": 0.25, "2": 0.75}) and reply["mass"] == 0.0


def test_choices_enter_the_cache_key_only_when_set():
    assert "choices" not in Decoding().as_dict()  # keys cached before choices existed still match
    assert Decoding(choices=("1", "2")).as_dict()["choices"] == ["1", "2"]
    backend = tiny_backend()
    request = requests_for(["Why"])[0]
    assert request_key(backend, request, Decoding()) != request_key(
        backend, request, Decoding(choices=("1",))
    )
