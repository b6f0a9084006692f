"""The flags that point a command at the user's own data instead of a GLUE task (one definition, so
``finetune``, ``compress``, ``prune``, ``distill``, ``sweep``, ``evaluate`` and ``data check`` agree)."""
from __future__ import annotations

from ddk_fast.data.custom import EXTENSIONS, KINDS

_FORMATS = "/".join(e[1:] for e in EXTENSIONS)

DATA_FLAGS = (
    ("--train-file", f"your own training data ({_FORMATS}; a SQuAD v1.1/v2.0 .json for QA); the label set "
                     "comes from it (--task lm: a plain-text file)"),
    ("--validation-file", f"your own validation data ({_FORMATS}); default: a seeded 10%% of --train-file"),
    ("--dataset", "a hub dataset NAME[:CONFIG], a datasets.save_to_disk folder or a folder of data files"),
    ("--text-columns", "the text column, or two for sentence pairs: a[,b] (default: text, sentence, "
                       "sentence1,sentence2, ..., tokens; QA: question,context)"),
    ("--label-column", "the label column (default: label, labels, score, ner_tags, tags or answers)"),
    ("--task-kind", f"{' | '.join(KINDS)} (default: inferred: a text column of word lists (or a .conll file) -> "
                    "token_classification, SQuAD answers ({text, answer_start}) -> qa, label lists -> multilabel, "
                    "floats -> regression, else classification)"),
)


def add_data_flags(parser) -> None:
    """Add the data flags a parser does not have yet (``--train-file`` may exist for ``--task lm``)."""
    have = set(parser._option_string_actions)
    for flag, help_text in DATA_FLAGS:
        if flag not in have:
            parser.add_argument(flag, default=None, help=help_text)


def add_task_flags(parser, task_help: str = "GLUE task, or a name for your own data") -> None:
    """``--task``, ``--data-dir`` (GLUE) and the data flags (the user's own data)."""
    parser.add_argument("--task", default=None, help=task_help)
    parser.add_argument("--data-dir", default=None, help="folder of GLUE TSVs (with a GLUE --task)")
    add_data_flags(parser)


def data_options(args) -> dict:
    """The data flags of parsed ``args`` as DataOptions keyword arguments."""
    return {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"), None) for flag, _ in DATA_FLAGS}
