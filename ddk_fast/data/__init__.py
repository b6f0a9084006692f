"""GLUE, users' own datasets and plain-text data: loading, validation, tokenisation, batching, metrics.

API summary (everything below is importable from ``ddk_fast.data``)

Tasks
- ``GLUE_TASKS: dict[str, TaskSpec]`` keyed by the ``datasets`` config name:
  cola sst2 mrpc stsb qqp mnli qnli rte wnli.
- ``get_task(name) -> TaskSpec``; raises ``DataError`` listing the valid names.
  ``TaskSpec`` fields: ``name, glue_dir`` ("CoLA", "SST-2", ...), ``hub_columns`` (text_a, text_b|None),
  ``num_labels`` (stsb: 1), ``is_regression``, ``label_names``, ``splits`` (train, validation /
  mnli: validation_matched, validation_mismatched), ``eval_splits``, ``metric_names``, ``main_metric``.
- ``DataError(ValueError)``: one-line message naming the file, line number and problem.

Users' own data (``ddk_fast.data.custom``; docs/data.md)
- ``DataSource(train_file=None, validation_file=None, dataset=None)``: csv/tsv/json/jsonl/parquet files, or
  a hub ``NAME[:CONFIG]`` / ``save_to_disk`` folder; no validation: a seeded 10 % of train is held out.
- ``build_task(source, text_columns=None, label_column=None, kind=None, name=None) -> CustomTask``: columns
  given or found, kind inferred (word lists: token_classification, SQuAD answers: qa, lists: multilabel,
  floats: regression, else classification), label set
  from the train split. ``CustomTask`` answers what ``TaskSpec`` does (name, num_labels, is_regression,
  is_multilabel, label_names, metric_names, main_metric, splits) and works wherever a task name does
  (``load_task``, ``compute_metrics``, ``get_task``). ``to_dict``/``from_dict``; ``write_task_file`` /
  ``read_task_file`` keep it as ``task.json`` in a run's output.
- Errors: ``DataError`` naming the file (or dataset and split), the 1-based data row and the column.

Loading
- ``load_task(task, split="train", data_dir=None, max_examples=None, seed=0, *, skip_bad_rows=False)
  -> list[Example]``
  ``Example(text_a: str, text_b: str | None, label: int | float | tuple)`` (frozen dataclass; float for
  regression, a multi-hot tuple of floats for multi-label). ``task`` may be a task object (``CustomTask``).
  data_dir=None: ``datasets.load_dataset("nyu-mll/glue", task, split=...)``; otherwise a folder holding
  task subfolders (``data_dir/MRPC/dev.tsv``) or the task folder itself. "validation" reads dev.tsv
  (mnli: "validation" means validation_matched). ``max_examples`` keeps a seeded random subset in file order.
  Lower level: ``find_task_file(task, split, data_dir) -> str``, ``read_glue_tsv(path, task, split) -> list``.

Extractive QA (kind ``qa``: a SQuAD v1.1/v2.0 ``.json`` or rows with question, context, answers)
- ``load_task`` gives ``QAExample(id, question, context, answers: ((text, answer_start), ...))``.
- ``encode_qa(examples, tokenizer, max_length=384, doc_stride=None) -> QAFeatures``: question + context
  windows (``truncation="only_second"``, overlapping by ``doc_stride`` tokens, default max_length / 3),
  labels ``SpanPositions(start, end)`` ([CLS] twice when the window holds no answer), per-token context
  offsets; ``.examples``, ``.example_index``, ``.references`` (id -> gold texts).
- ``best_answers(features, logits [W, T, 2], allow_no_answer=False, n_best=20, max_answer_tokens=30)
  -> {id: text}`` (``ddk_fast.data.qa_answers``; ``answer_candidates`` for the n-best lists);
  ``compute_metrics(task, {id: text}, {id: [gold texts]})`` -> SQuAD ``exact_match`` and ``f1``.

Tokenisation and batching
- ``encode(examples, tokenizer, max_length=128) -> EncodedDataset`` (a torch Dataset of unpadded
  examples; ``len()``, ``[i] -> dict``, ``.lengths``, ``.pad_token_id``, ``.is_regression``).
- ``collate(features, pad_token_id=0) -> dict[str, Tensor]``: pads to the longest sequence in the batch.
  Batch keys: ``input_ids`` [B, T] long, ``attention_mask`` [B, T] long, ``token_type_ids`` [B, T] long,
  ``labels`` [B] (long for classification, float32 for stsb). ``token_type_ids`` are all zeros for
  tokenizers without segment ids (RoBERTa, GPT-2).
- ``make_dataloader(encoded, batch_size, shuffle=False, seed=0, drop_last=False, sampler=None,
  sort_by_length=False, num_workers=0, pad_to_multiple_of=None) -> torch.utils.data.DataLoader``; the
  same seed gives the same batches; ``sampler`` may be a DistributedSampler (then shuffling is the
  sampler's job); ``sort_by_length`` groups similar lengths within buckets (less padding, faster eval;
  batches then come out of example order, so take labels from the batches).
  Call ``set_loader_epoch(loader, epoch)`` each epoch to reshuffle deterministically.

Metrics
- ``compute_metrics(task, predictions, labels) -> dict[str, float]``: the task's metrics through
  scikit-learn/scipy (cola: mcc; sst2/qnli/rte/wnli/mnli: accuracy; mrpc/qqp: f1, accuracy; stsb: pearson,
  spearman; own data: accuracy + f1_macro, pearson + spearman, or f1_micro for multi-label) plus ``score``
  (their mean). ``predictions``: logits [N, C] or class ids [N] (stsb: floats [N] or
  [N, 1]). ``get_task(task).main_metric`` names the metric to select checkpoints by.

Plain-text LM data
- ``load_text_lm(path, tokenizer, block_size, max_blocks=None) -> Tensor`` [n_blocks, block_size] long.
"""
from ddk_fast.data.custom import CustomTask, DataSource, build_task, read_task_file, write_task_file
from ddk_fast.data.encoding import BATCH_KEYS, EncodedDataset, SpanPositions, collate, encode, pad_token_id_of
from ddk_fast.data.examples import QAExample
from ddk_fast.data.qa_answers import best_answers
from ddk_fast.data.qa_encoding import QAFeatures, encode_qa
from ddk_fast.data.glue import HUB_DATASET, Example, find_task_file, load_task, read_glue_tsv
from ddk_fast.data.loader import LengthGroupedBatchSampler, SeededShuffleSampler, make_dataloader, set_loader_epoch
from ddk_fast.data.metrics import compute_metrics
from ddk_fast.data.tasks import GLUE_TASKS, DataError, TaskSpec, get_task
from ddk_fast.data.text_lm import load_text_lm

__all__ = [
    "BATCH_KEYS", "CustomTask", "DataError", "QAExample", "QAFeatures", "SpanPositions", "best_answers", "encode_qa", "DataSource", "build_task", "read_task_file", "write_task_file", "EncodedDataset", "Example", "GLUE_TASKS", "HUB_DATASET", "LengthGroupedBatchSampler",
    "SeededShuffleSampler", "TaskSpec", "collate", "compute_metrics", "encode", "find_task_file", "get_task",
    "load_task", "load_text_lm", "make_dataloader", "pad_token_id_of", "read_glue_tsv", "set_loader_epoch",
]
