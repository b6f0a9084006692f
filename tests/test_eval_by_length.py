"""Dev evaluation batches by length (each batch padded to its own longest row) and hands its rows back
in example order: the same predictions and metrics as input-order batches, with fewer padded tokens."""
import os
import random

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

from ddk_fast.data import encode, load_task
from ddk_fast.data.custom import DataSource, build_task
from ddk_fast.data.examples import Example
from ddk_fast.ops.label_losses import IGNORE_INDEX
from ddk_fast.runs.batching import eval_loader
from ddk_fast.runs.evaluation import evaluate, predict

NER_SAMPLE = os.path.join(os.path.dirname(__file__), "data", "ner_sample.conll")
WORDS = "the a film plot was slow bright cast long dull warm story ending music scene".split()

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(cls, num_labels, vocab_size):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
                        initializer_range=0.5)
    return cls(config).eval()


def _logits_fn(model):
    return lambda b: model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                           token_type_ids=b["token_type_ids"]).logits


def _positions(loader) -> tuple[int, int]:
    """(positions run through the model, real tokens among them)."""
    batches = list(loader)
    return sum(b["input_ids"].numel() for b in batches), sum(int(b["attention_mask"].sum()) for b in batches)


def _check(model, encoded, task, batch_size):
    by_length, in_order = eval_loader(encoded, batch_size), eval_loader(encoded, batch_size, by_length=False)
    first_ids = next(iter(by_length))["example_ids"].tolist()
    assert first_ids != list(range(len(first_ids))), "the length order must differ from the input order"
    logits, labels = predict(_logits_fn(model), by_length, "cpu")
    ref_logits, ref_labels = predict(_logits_fn(model), in_order, "cpu")
    assert torch.equal(labels, ref_labels)  # rows back in example order
    scored = labels != IGNORE_INDEX if labels.dim() == 2 else slice(None)
    torch.testing.assert_close(logits[scored], ref_logits[scored], atol=1e-4, rtol=1e-5)  # other padding, other sums
    assert evaluate(model, _logits_fn(model), by_length, "cpu", task) == \
        evaluate(model, _logits_fn(model), in_order, "cpu", task)
    (sorted_positions, real), (plain_positions, plain_real) = _positions(by_length), _positions(in_order)
    assert real == plain_real == sum(encoded.lengths)
    assert sorted_positions < plain_positions
    return sorted_positions / plain_positions


def test_sentence_classification_scores_the_same_with_less_padding(tokenizer):
    rng = random.Random(0)
    examples = [Example(" ".join(rng.choice(WORDS) for _ in range(rng.choice((2, 3, 5, 12, 30)))), None, i % 2)
                for i in range(60)]
    encoded = encode(examples, tokenizer, max_length=48)
    model = _tiny(BertForSequenceClassification, 2, len(tokenizer))
    assert _check(model, encoded, "sst2", batch_size=8) < 0.6  # lengths 2..30 words: most padding goes


def test_token_classification_scores_the_same_with_less_padding(tokenizer):
    task = build_task(DataSource(NER_SAMPLE))
    examples = load_task(task, "train")[:80]
    encoded = encode(examples, tokenizer, max_length=48)
    model = _tiny(BertForTokenClassification, task.num_labels, len(tokenizer))
    assert _check(model, encoded, task, batch_size=8) < 0.9  # similar sentence lengths: less to save
