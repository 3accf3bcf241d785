"""Task definitions: prompts exactly as lm-evaluation-harness writes them (expected strings
written from the harness YAMLs), data loading, subsets, errors, results and comparisons."""
import gzip
import json

import pytest

import eval_helpers as H

from scalelab.errors import ScalelabError
from scalelab.eval import tasks as T
from scalelab.eval.tasks import run as RUN
from scalelab.eval.gpt_backend import GPTEvalModel


pytestmark = pytest.mark.usefixtures("one_thread")


def example(task, i):
    spec = H.fixture_spec(task)
    docs, _ = T.load_docs(spec)
    return T.format_example(spec, docs[i], i)


# -- formatting: the harness's strings ------------------------------------------------


def test_hellaswag_preprocess_and_format():
    # hellaswag.yaml: query = preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())
    ex = example("hellaswag", 0)
    assert ex.requests[0] == ("Roof shingle removal: A man is sitting on a roof. He",
                              " is using wrap to wrap a pair of skis.")
    assert [k for _, k in ex.requests] == [" is using wrap to wrap a pair of skis.", " is ripping level tiles off.",
                                           " is holding a rubik's cube.", " starts pulling up roofing on a roof."]
    assert ex.gold == 3
    # WikiHow row: " [title]" -> ". ", [header]/[step]/[substeps] dropped, double spaces collapsed
    ex = example("hellaswag", 2)
    ctx = ex.requests[0][0]
    assert ctx == ("Personal Care and Style: How to become a fashion consultant. Obtain your high school diploma or "
                   "ged. This job requires a high school diploma or equivalent, so make sure to apply yourself and "
                   "finish school. If your high school offers these classes, take art, design, and sewing to "
                   "familiarize yourself with foundational concepts in fashion.")
    # an ending that started with "[substeps] " keeps the space left after the bracket is removed
    assert ex.requests[0][1] == ("  Many high schools have classes offered for their students who do not have a high "
                                 "school diploma, so be sure to register to take these classes and find a job in your "
                                 "field.. Search for entry-level positions in fashion industries.")
    assert ex.choices[3] == " Earn a bachelor's degree in a fashion-related field. Degrees for the fashion industry " \
                            "include art, fashion merchandising, and marketing."
    assert ex.gold == 3


def test_winogrande_partial_scoring_format():
    # the option fills the blank and ends the context; the rest of the sentence is the continuation
    ex = example("winogrande", 0)
    assert ex.requests == [("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
                           ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases.")]
    assert ex.gold == 1  # answer "2"
    assert example("winogrande", 2).requests[0] == (
        "They were worried the wine would ruin the bed and the blanket, but the blanket", " was't ruined.")


def test_arc_format_and_numeric_labels():
    ex = example("arc_easy", 0)
    assert ex.requests == [("Question: Which technology was developed most recently?\nAnswer:", f" {c}")
                           for c in ["cellular telephone", "television", "refrigerator", "airplane"]]
    assert ex.gold == 0
    ex = example("arc_easy", 2)  # a question labelled 1..4 instead of A..D
    spec = H.fixture_spec("arc_easy")
    doc = T.load_docs(spec)[0][2]
    assert doc["answerKey"].isdigit() and ex.gold == doc["choices"]["label"].index(doc["answerKey"])
    ex = example("arc_easy", 3)  # 3 choices
    assert len(ex.requests) == len(T.load_docs(spec)[0][3]["choices"]["text"])


def test_piqa_boolq_sciq_openbookqa_format():
    ex = example("piqa", 0)
    assert ex.requests[0][0] == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    assert ex.requests[1][1].startswith(" Provide the guinea pig with a cage full of a few inches of bedding made of "
                                        "ripped jeans material")
    ex = example("boolq", 0)
    assert ex.requests[0][0].startswith("All biomass goes through at least some of these steps")
    assert ex.requests[0][0].endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert [k for _, k in ex.requests] == [" no", " yes"] and ex.gold == 0  # answer False -> "no"
    ex = example("sciq", 0)  # empty support: the prompt starts with a newline
    assert ex.requests[0][0] == "\nQuestion: Who proposed the theory of evolution by natural selection?\nAnswer:"
    assert [k for _, k in ex.requests] == [" Linnaeus", " shaw", " Scopes", " darwin"] and ex.gold == 3
    ex = example("openbookqa", 0)
    assert ex.requests[0] == ("Frilled sharks and angler fish live far beneath the surface of the ocean, which is why "
                              "they are known as", " Deep sea animals")


def test_lambada_format():
    ex = example("lambada", 0)
    ctx, target = ex.requests[0]
    assert target == " signs"
    assert ctx.endswith("his mouth curved in a confident grin, I don't care about")
    assert ex.gold is None


# -- task names and files ---------------------------------------------------------------


def test_unknown_task_suggests_close_names():
    with pytest.raises(T.TaskError, match="did you mean 'hellaswag'"):
        T.get_spec("helaswag")
    with pytest.raises(ScalelabError, match="Known tasks"):
        T.get_spec("definitely_not_a_task")
    assert T.get_spec("lambada_openai").name == "lambada"  # alias
    assert {"hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "openbookqa", "sciq", "boolq",
            "lambada"} <= set(T.available_tasks())


@pytest.mark.parametrize("text,match", [
    ("task: x\n  bad: [indent", "not valid YAML"),
    ("- just\n- a list\n", "must be a YAML mapping"),
    ("task: x\nlocal: {file: a.jsonl}\ndoc_to_text: q\ndoc_to_target: g\ndoc_to_choise: c\n", "did you mean 'doc_to_choice'"),
    ("task: x\nlocal: {file: a.jsonl}\ndoc_to_text: q\ndoc_to_target: g\n", "needs 'doc_to_choice'"),
    ("task: x\nlocal: {file: a.jsonl}\ndoc_to_text: '{{ q '\ndoc_to_target: g\ndoc_to_choice: c\n", "not a valid Jinja"),
    ("task: x\ndoc_to_text: q\ndoc_to_target: g\ndoc_to_choice: c\n", "needs a data source"),
    ("task: x\nlocal: {file: a.jsonl}\ndoc_to_text: q\ndoc_to_target: g\ndoc_to_choice: c\nmetrics: [f1]\n", "not available"),
    ("task: x\noutput_type: generate\nlocal: {file: a.jsonl}\ndoc_to_text: q\ndoc_to_target: g\n", "output_type"),
])
def test_malformed_task_file_errors(tmp_path, text, match):
    p = tmp_path / "task.yaml"
    p.write_text(text)
    with pytest.raises(T.TaskError, match=match):
        T.get_spec(p)


def test_template_error_names_the_document(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"q": "hi", "c": ["a", "b"], "g": 0}) + "\n")
    (tmp_path / "t.yaml").write_text("task: t\nlocal: {file: d.jsonl}\ndoc_to_text: '{{ question }}'\n"
                                     "doc_to_target: g\ndoc_to_choice: c\n")
    with pytest.raises(T.TaskError, match="document 0.*question"):
        T.build_examples(T.get_spec(tmp_path / "t.yaml"))


def test_user_yaml_task_and_jsonl_task(tmp_path):
    rows = [{"question": "2 + 2 =", "options": ["4", "5", "22"], "answer": 0},
            {"question": "The sky is", "options": ["green", "blue"], "answer": 1}]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "mine.yaml").write_text(
        "task: mine\nlocal: {file: mine.jsonl}\ndoc_to_text: \"Q: {{question}}\\nA:\"\n"
        "doc_to_target: answer\ndoc_to_choice: options\nmetrics: [acc, acc_norm]\n")
    examples, n, where = T.build_examples(T.get_spec(tmp_path / "mine.yaml"))
    assert n == 2 and examples[0].requests[0] == ("Q: 2 + 2 =\nA:", " 4") and examples[1].gold == 1
    # JSONL with query / choices / gold, no YAML at all
    (tmp_path / "qcg.jsonl").write_text(json.dumps({"query": "Capital of France?", "choices": ["Paris", "Rome"],
                                                    "gold": 0}) + "\n")
    ex, _, _ = T.build_examples(T.get_spec(tmp_path / "qcg.jsonl"))
    assert ex[0].requests == [("Capital of France?", " Paris"), ("Capital of France?", " Rome")]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"query": "x", "choices": ["a", "b"], "gold": 2}) + "\n")
    with pytest.raises(T.TaskError, match="line 1 needs 'gold'"):
        T.build_examples(T.get_spec(tmp_path / "bad.jsonl"))
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(T.TaskError, match="broken.jsonl:1 is not valid JSON"):
        T.build_examples(T.get_spec(tmp_path / "broken.jsonl"))


def test_requests_jsonl_gz_rows_become_documents(tmp_path):
    rows = T.read_rows(H.FIXTURES / "lambada_requests.jsonl.gz")
    assert len(rows) == 8 and rows[0]["request_continuation"] == " signs"
    with gzip.open(H.FIXTURES / "lambada_requests.jsonl.gz", "rt") as f:
        first = json.loads(f.readline())
    assert rows[0]["query"] == first["doc"]["query"]


def test_missing_local_data_without_hub_is_a_clear_error(tmp_path):
    spec = H.fixture_spec("piqa")
    spec.local = {"package": "no_such_package_xyz", "path": "x.arrow"}
    with pytest.raises(T.TaskError, match="no local copy"):
        T.load_docs(spec, source="local")


def test_seeded_subsets_are_fixed_and_nested():
    a = T.select_indices(1000, limit=50, seed=3)
    assert a == T.select_indices(1000, limit=50, seed=3) and a == sorted(a) and len(set(a)) == 50
    assert set(a) <= set(T.select_indices(1000, limit=200, seed=3))
    assert a != T.select_indices(1000, limit=50, seed=4)
    assert len(T.select_indices(1000, fraction=0.1, seed=0)) == 100
    assert T.select_indices(10, limit=50) == list(range(10))
    with pytest.raises(ScalelabError):
        T.select_indices(10, limit=5, fraction=0.5)



def test_limit_processes_only_the_selected_documents(monkeypatch):
    # --limit N selects the same seeded subset of the raw rows and runs process_docs on those N only.
    from scalelab.eval.tasks import data as D

    spec = H.fixture_spec("hellaswag")
    every = T.load_docs(spec)[0]
    picked = T.select_indices(len(every), limit=3, seed=5)
    calls = []
    real = D.PROCESSORS["hellaswag"]
    monkeypatch.setitem(D.PROCESSORS, "hellaswag", lambda doc: calls.append(doc) or real(doc))
    monkeypatch.setattr(D, "_DOC_CACHE", {})
    examples, n, _ = T.build_examples(spec, limit=3, seed=5)
    assert n == len(every) > 3 and len(calls) == 3
    assert [e.doc_id for e in examples] == picked
    assert [e.requests for e in examples] == [T.format_example(spec, every[i], i).requests for i in picked]
    T.build_examples(spec, limit=3, seed=5)
    assert len(calls) == 3  # processed documents are cached

# -- running, results, comparison -----------------------------------------------------------


def fixture_results(model, tasks=("arc_easy", "winogrande", "lambada", "hellaswag")):
    specs = {t: H.fixture_spec(t) for t in tasks}
    orig = T.get_spec
    RUN.get_spec = lambda name: specs[name] if name in specs else orig(name)  # where evaluate looks it up
    try:
        return T.evaluate(model, list(tasks), progress=False, n_boot=200)
    finally:
        RUN.get_spec = orig


def test_evaluate_write_load_and_compare(tmp_path):
    em = GPTEvalModel(H.trained_gpt(), H.tokenizer(), device="cpu")
    res = fixture_results(em)
    r = res["results"]
    assert set(r) == {"arc_easy", "winogrande", "lambada", "hellaswag"}
    assert r["arc_easy"]["n"] == 5 and 0 <= r["arc_easy"]["acc"] <= 1
    lo, hi = r["arc_easy"]["acc_ci"]
    assert 0 <= lo <= r["arc_easy"]["acc"] <= hi <= 1 and r["arc_easy"]["acc_ci_method"] == "wilson"
    assert "acc_norm" not in r["winogrande"] and r["lambada"]["perplexity"] > 1
    assert r["hellaswag"]["n_truncated"] > 0  # long WikiHow contexts vs a 32-token window, counted
    # per-example records agree with the aggregate
    recs = res["samples"]["arc_easy"]
    assert sum(x["acc"] for x in recs) / len(recs) == pytest.approx(r["arc_easy"]["acc"])
    assert res["model"]["name"] == "gpt" and "torch" in res["versions"]
    paths = T.write_results(res, tmp_path / "a")
    on_disk = json.loads(paths["results"].read_text())
    assert "samples" in on_disk and on_disk["samples"]["arc_easy"] == "samples_arc_easy.jsonl"
    assert "| arc_easy | acc |" in paths["table"].read_text()
    back = T.load_results(tmp_path / "a")
    assert back["samples"]["lambada"][0]["ll"] == pytest.approx(res["samples"]["lambada"][0]["ll"])
    # identical inputs: difference 0, p-value ~1
    cmp = T.compare(tmp_path / "a", tmp_path / "a")
    for per in cmp["tasks"].values():
        for m in per.values():
            assert m["diff"] == 0 and m["p_value"] > 0.99
    assert "A - B" in T.format_compare(cmp)
    # a different model differs, with a CI around the difference
    other = fixture_results(GPTEvalModel(H.tiny_gpt(H.tokenizer().vocab_size, seq_len=32), H.tokenizer(), device="cpu"))
    cmp = T.compare(res, other)
    ll = cmp["tasks"]["lambada"]["ll"]
    assert ll["ci"][0] <= ll["diff"] <= ll["ci"][1] and ll["diff"] > 0  # the trained model is likelier


def test_run_tasks_in_training_on_a_bare_gpt():
    model = H.trained_gpt()
    model.train()
    specs = {t: H.fixture_spec(t) for t in ("arc_easy", "winogrande")}
    orig = T.get_spec
    RUN.get_spec = lambda name: specs[name] if name in specs else orig(name)  # where evaluate looks it up
    try:
        out = T.run_tasks_in_training(model, H.tokenizer(), ["arc_easy", "winogrande"], limit=4, device="cpu")
        again = T.run_tasks_in_training(model, H.tokenizer(), ["arc_easy", "winogrande"], limit=4, device="cpu")
    finally:
        RUN.get_spec = orig
    assert set(out) == {"arc_easy", "winogrande"} and all(0 <= v <= 1 for v in out.values())
    assert out == again and model.training  # deterministic; train mode restored
