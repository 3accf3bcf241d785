"""Task facts (chance level, headline metric, display name, aliases) have one home: the task
YAMLs' metadata, read by eval.tasks.spec; the reports and studies ask it."""
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from scalelab.eval import tasks as T
from scalelab.eval.task_files import export_harness_task

SRC = Path(__file__).resolve().parents[1] / "src" / "scalelab"


def test_every_builtin_states_its_facts():
    for name in T.builtin_specs():
        spec = T.get_spec(name)
        assert spec.display_name and spec.label == spec.display_name, name
        assert spec.chance is not None and 0 <= spec.chance <= 1, name
        assert spec.headline in spec.metrics, name


def test_chance_is_one_over_the_choices_the_data_has():
    """metadata.chance agrees with the examples built from the task's own data (the
    offline sets of scripts/setup.sh); LAMBADA is open-vocabulary: chance 0."""
    for name in T.builtin_specs():
        spec = T.get_spec(name)
        if spec.output_type != "multiple_choice":
            assert spec.chance == 0.0, name
            continue
        examples, _, _ = T.build_examples(spec, limit=40, seed=0)
        measured = float(np.mean([1.0 / len(e.choices) for e in examples]))
        assert measured == pytest.approx(spec.chance, abs=0.01), name


def test_lookups_by_name_and_alias():
    assert T.canonical_task("lambada_openai") == "lambada" and T.canonical_task("my_task") == "my_task"
    assert T.chance_level("lambada_openai") == 0.0 and T.chance_level("hellaswag") == 0.25
    assert T.chance_level("my_task") is None  # a task file's task: not known by name
    assert T.headline_metric("hellaswag") == "acc_norm" and T.headline_metric("arc_easy") == "acc"
    assert T.headline_metric("my_task") == "acc"
    assert T.task_label("arc_challenge") == "ARC-Challenge" and T.task_label("my_task") == "my_task"
    # what in-training evaluation and the run report's line about it both call the task's metric
    assert T.get_spec("piqa").primary_metric == "acc_norm" and T.get_spec("winogrande").primary_metric == "acc"


def _task(tmp_path, **meta):
    raw = {"task": "t", "doc_to_text": "q", "doc_to_target": "g", "doc_to_choice": "c",
           "local": {"file": "t.jsonl"}, "metadata": meta}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_bad_metadata_is_one_message(tmp_path):
    with pytest.raises(T.TaskError, match=r"metadata.chance must be a number in \[0, 1\]"):
        T.load_spec_file(_task(tmp_path, chance=4))
    with pytest.raises(T.TaskError, match="metadata.headline 'f1' is not one of the task's metrics"):
        T.load_spec_file(_task(tmp_path, headline="f1"))
    spec = T.load_spec_file(_task(tmp_path, chance=0.5, display_name="My task", other="kept for the harness"))
    assert (spec.chance, spec.label, spec.headline) == (0.5, "My task", "acc")


def test_exported_task_keeps_its_facts(tmp_path):
    paths = export_harness_task("hellaswag", tmp_path)
    meta = yaml.safe_load(paths["yaml"].read_text())["metadata"]
    assert meta["chance"] == 0.25 and meta["headline"] == "acc_norm" and meta["display_name"] == "HellaSwag"
    back = T.get_spec(paths["yaml"])
    assert (back.chance, back.headline, back.label) == (0.25, "acc_norm", "HellaSwag")


def test_no_copy_of_the_facts_outside_the_task_specs():
    """A per-task table (`"hellaswag": 0.25`, `"hellaswag": "HellaSwag"`) anywhere in the
    source is a second home for a fact the task YAML holds."""
    table_entry = re.compile(r"""["'](hellaswag|arc_easy|piqa)["']\s*:\s*["'\d]""")
    copies = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if table_entry.search(p.read_text(encoding="utf-8"))]
    assert copies == []
