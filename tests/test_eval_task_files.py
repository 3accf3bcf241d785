"""One task file for both tools: scalelab reads the harness's local-file form
(dataset_path + dataset_kwargs.data_files), and `--export-harness-task` writes YAMLs that
lm-evaluation-harness runs with requests identical to scalelab's."""
import json
from pathlib import Path

import pytest

import eval_helpers as H

from scalelab.eval import tasks as T
from scalelab.eval.task_files import export_harness_task

pytestmark = pytest.mark.usefixtures("one_thread")

ARC_HARNESS_FORM = """\
task: my_arc
tag: [science]
dataset_path: arrow
dataset_name: null
dataset_kwargs:
  data_files:
    validation: {file}
training_split: null
validation_split: validation
test_split: null
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
should_decontaminate: true
doc_to_decontamination_query: "Question: {{{{question}}}}\\nAnswer:"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _requests(spec):
    return [(e.requests, e.gold) for e in T.build_examples(spec)[0]]


def test_harness_local_form_reads_like_local(tmp_path, monkeypatch):
    ours = _requests(H.fixture_spec("arc_easy"))
    absolute = tmp_path / "abs.yaml"
    absolute.write_text(ARC_HARNESS_FORM.format(file=H.FIXTURES / "arc_easy.arrow"))
    spec = T.get_spec(absolute)
    assert spec.local == {"file": str(H.FIXTURES / "arc_easy.arrow")} and spec.dataset_path is None
    assert spec.metrics == ["acc", "acc_norm"] and _requests(spec) == ours
    # a relative data file is read from the current directory, as `datasets` (and so the harness) does
    (tmp_path / "tasks").mkdir()
    rel = tmp_path / "tasks" / "rel.yaml"
    rel.write_text(ARC_HARNESS_FORM.format(file="data/arc.arrow"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "arc.arrow").write_bytes((H.FIXTURES / "arc_easy.arrow").read_bytes())
    monkeypatch.chdir(tmp_path)
    assert _requests(T.get_spec(rel)) == ours


def test_harness_split_order_and_multiple_input_detection(tmp_path):
    # winogrande without scalelab's multiple_input key: doc_to_text renders the gold index,
    # which (as in the harness) makes the choices the contexts
    src = H.fixture_spec("winogrande")
    text = (f"task: w\ndataset_path: arrow\ndataset_kwargs:\n  data_files:\n    test: {src.local['file']}\n"
            f"    validation: /nonexistent.arrow\nvalidation_split: validation\ntest_split: test\n"
            f"doc_to_text: {json.dumps(src.doc_to_text)}\ndoc_to_choice: {json.dumps(src.doc_to_choice)}\n"
            f"doc_to_target: {json.dumps(src.doc_to_target)}\nmetric_list: [{{metric: acc}}]\n")
    (tmp_path / "w.yaml").write_text(text)
    spec = T.get_spec(tmp_path / "w.yaml")
    assert spec.split == "test" and not spec.multiple_input  # test_split wins, as in the harness
    assert _requests(spec) == _requests(src)


@pytest.mark.parametrize("extra, message", [
    ("include: arc_easy.yaml\n", "'include' is not resolved"),
    ("num_fewshot: 5\n", "0-shot only"),
    ("description: 'Answer well.'\n", "without a description"),
    ("dataset_kwargs:\n  data_files: {train: x.arrow}\n", "has splits train but the task evaluates 'validation'"),
    ("dataset_kwargs:\n  data_dir: x\n", "reads only dataset_kwargs.data_files"),
])
def test_harness_form_mistakes_are_one_message(tmp_path, extra, message):
    base = ("task: t\ndataset_path: arrow\nvalidation_split: validation\ndoc_to_text: q\ndoc_to_target: 0\n"
            "doc_to_choice: [a, b]\n")
    if "dataset_kwargs" not in extra:
        base += f"dataset_kwargs:\n  data_files:\n    validation: {H.FIXTURES / 'arc_easy.arrow'}\n"
    (tmp_path / "t.yaml").write_text(base + extra)
    with pytest.raises(T.TaskError, match=message):
        T.get_spec(tmp_path / "t.yaml")


def test_harness_builder_scalelab_cannot_read_is_named(tmp_path):
    (tmp_path / "c.yaml").write_text("task: t\ndataset_path: csv\ndataset_kwargs: {data_files: x.csv}\n"
                                     "doc_to_text: q\ndoc_to_target: 0\ndoc_to_choice: [a, b]\n")
    with pytest.raises(T.TaskError, match="needs dataset_path: json / arrow / parquet .* got 'csv'"):
        T.get_spec(tmp_path / "c.yaml")


def _harness_requests(out_dir: Path, names: list[str]) -> dict:
    """{task: [(requests, gold) per document]} as lm-evaluation-harness builds them from out_dir."""
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(out_dir), include_defaults=False)
    got = {}
    for name, task in tm.load(names)["tasks"].items():
        task.build_all_requests(rank=0, world_size=1)
        docs: dict[int, list] = {}
        for inst in sorted(task.instances, key=lambda i: (i.doc_id, i.idx)):
            docs.setdefault(inst.doc_id, []).append(tuple(inst.args))
        got[name] = [docs[k] for k in sorted(docs)]
    return got


def test_exported_builtins_give_the_harness_our_requests(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    names = sorted(H.FIXTURE_FILES)
    written = {n: export_harness_task(H.fixture_spec(n), tmp_path) for n in names}
    # processed documents only where scalelab processes them (hellaswag, the lambada requests file)
    assert {n for n, p in written.items() if p["docs"]} == {"hellaswag", "lambada"}
    harness = _harness_requests(tmp_path, names)
    for name in names:
        ours = T.build_examples(H.fixture_spec(name))[0]
        assert harness[name] == [e.requests for e in ours], name
        back = T.get_spec(written[name]["yaml"])  # and scalelab reads the same file
        assert [e.requests for e in T.build_examples(back)[0]] == [e.requests for e in ours], name
        assert back.metrics == H.fixture_spec(name).metrics


def test_export_user_jsonl_task_and_hub_form(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    qcg = tmp_path / "quiz.jsonl"
    qcg.write_text("".join(json.dumps({"query": f"Q{i}: 2+{i}=", "choices": [str(2 + i), "7"], "gold": 0}) + "\n"
                           for i in range(3)))
    out = tmp_path / "h"
    paths = export_harness_task(str(qcg), out)
    assert paths["docs"] is None  # the harness reads the user's file itself
    assert _harness_requests(out, ["quiz"])["quiz"] == [e.requests for e in T.build_examples(T.get_spec(qcg))[0]]
    hub = export_harness_task("arc_easy", tmp_path / "hub", source="hub")
    text = hub["yaml"].read_text()
    assert "dataset_path: allenai/ai2_arc" in text and "dataset_name: ARC-Easy" in text
    assert "data_files" not in text and "local" not in text


def test_cli_export_never_overwrites(tmp_path, capsys):
    from scalelab.cli import main

    assert main(["eval", "--export-harness-task", "arc_easy", str(tmp_path)]) == 0
    assert "lm_eval --include_path" in capsys.readouterr().out
    before = (tmp_path / "arc_easy.yaml").read_text()
    assert main(["eval", "--export-harness-task", "arc_easy", str(tmp_path)]) == 2
    assert "arc_easy.yaml' already exists; remove it or choose another directory" in capsys.readouterr().err
    assert (tmp_path / "arc_easy.yaml").read_text() == before
    assert T.get_spec(tmp_path / "arc_easy.yaml").split == "validation"
