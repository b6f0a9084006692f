"""Tokenisation, dynamic-padding collate, seeded loaders, and plain-text LM blocks."""
import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

from ddk_fast.data import (DataError, EncodedDataset, Example, collate, encode, load_task, load_text_lm,
                           make_dataloader, set_loader_epoch)

PAIRS = [Example("A man is playing a guitar.", "Someone plays music.", 1),
         Example("short", "a much longer second sentence with many more words in it", 0),
         Example("The quick brown fox jumps over the lazy dog near the river bank today.", "fox", 1)]


def test_encode_pairs_matches_the_tokenizer(tokenizer):
    enc = encode(PAIRS, tokenizer, max_length=128)
    assert len(enc) == 3 and not enc.is_regression and enc.pad_token_id == tokenizer.pad_token_id
    for i, ex in enumerate(PAIRS):
        ref = tokenizer(ex.text_a, ex.text_b)
        assert enc[i]["input_ids"] == ref["input_ids"]
        assert enc[i]["token_type_ids"] == ref["token_type_ids"]
        assert enc[i]["labels"] == ex.label and enc.lengths[i] == len(ref["input_ids"])
    assert 1 in enc[0]["token_type_ids"]  # the second segment is marked


def test_encode_truncates_longest_first(tokenizer):
    enc = encode(PAIRS, tokenizer, max_length=12)
    assert max(enc.lengths) == 12
    ids = enc[1]["input_ids"]  # "short" + long sentence: only the long one is cut
    assert ids[:3] == tokenizer("short")["input_ids"][:2] + [tokenizer.sep_token_id]
    assert ids[-1] == tokenizer.sep_token_id


def test_encode_rejects_mixed_pairs_and_nothing(tokenizer):
    with pytest.raises(DataError, match="mix of pairs"):
        encode([Example("a", None, 0), Example("b", "c", 1)], tokenizer)
    with pytest.raises(DataError, match="no examples"):
        encode([], tokenizer)


def test_collate_pads_to_the_batch_not_max_length(tokenizer):
    enc = encode(PAIRS, tokenizer, max_length=128)
    batch = collate([enc[0], enc[1]], pad_token_id=enc.pad_token_id)
    longest = max(enc.lengths[0], enc.lengths[1])
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert batch[key].shape == (2, longest) and batch[key].dtype == torch.long
    assert batch["attention_mask"].sum(1).tolist() == [enc.lengths[0], enc.lengths[1]]
    short = 0 if enc.lengths[0] < enc.lengths[1] else 1
    n = enc.lengths[short]
    assert batch["input_ids"][short, n:].eq(enc.pad_token_id).all()
    assert batch["token_type_ids"][short, n:].eq(0).all()
    assert batch["input_ids"][short, :n].tolist() == enc[short]["input_ids"]
    assert batch["labels"].tolist() == [1, 0] and batch["labels"].dtype == torch.long
    assert collate([enc[0]], pad_to_multiple_of=8)["input_ids"].shape[1] % 8 == 0


def test_regression_labels_are_float32(tokenizer):
    enc = encode([Example("a", "b", 3.5), Example("c", "d", 0.0)], tokenizer)
    batch = collate([enc[0], enc[1]])
    assert enc.is_regression and batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [3.5, 0.0]


def test_single_sentences_from_real_sst2(tokenizer, glue_dir):
    examples = load_task("sst2", "validation", data_dir=glue_dir, max_examples=64)
    enc = encode(examples, tokenizer, max_length=32)
    batches = list(make_dataloader(enc, batch_size=16))
    assert [b["input_ids"].shape[0] for b in batches] == [16] * 4
    assert all(b["token_type_ids"].eq(0).all() for b in batches)
    assert torch.cat([b["labels"] for b in batches]).tolist() == [ex.label for ex in examples]
    assert max(b["input_ids"].shape[1] for b in batches) <= 32


# ---------------------------------------------------------------- loaders


def index_dataset(n=23):
    """Example i has length 2 + (7 * i) % 11 and label i, so batches reveal which examples they hold."""
    ids = [[5] * (2 + (7 * i) % 11) for i in range(n)]
    return EncodedDataset(ids, [[0] * len(x) for x in ids], list(range(n)), pad_token_id=0, is_regression=False)


def order(loader):
    return [b["labels"].tolist() for b in loader]


def test_shuffled_loader_is_deterministic_given_the_seed():
    ds = index_dataset()
    a, b, c = (make_dataloader(ds, 4, shuffle=True, seed=s) for s in (7, 7, 8))
    first_a, first_b, first_c = order(a), order(b), order(c)
    assert first_a == first_b and first_a != first_c
    assert sorted(sum(first_a, [])) == list(range(23))
    second_a = order(a)
    assert second_a != first_a  # the next pass reshuffles
    set_loader_epoch(b, 1)
    assert order(b) == second_a  # pinning the epoch reproduces it (resume)
    assert order(make_dataloader(ds, 4, shuffle=False)) == [list(range(i, min(i + 4, 23))) for i in range(0, 23, 4)]


def test_drop_last():
    loader = make_dataloader(index_dataset(), 4, shuffle=True, seed=0, drop_last=True)
    assert len(loader) == 5 and all(len(batch) == 4 for batch in order(loader))


@pytest.mark.parametrize("shuffle", [False, True])
def test_sort_by_length_covers_everything_with_less_padding(shuffle):
    ds = index_dataset(40)
    plain = make_dataloader(ds, 8, shuffle=shuffle, seed=1)
    grouped = make_dataloader(ds, 8, shuffle=shuffle, seed=1, sort_by_length=True)
    assert sorted(sum(order(grouped), [])) == list(range(40)) and len(grouped) == 5
    assert sum(b["input_ids"].numel() for b in grouped) < sum(b["input_ids"].numel() for b in plain)
    if not shuffle:
        widths = [b["input_ids"].shape[1] for b in grouped]
        assert widths == sorted(widths, reverse=True)
    again = make_dataloader(ds, 8, shuffle=shuffle, seed=1, sort_by_length=True)
    assert order(again) == order(make_dataloader(ds, 8, shuffle=shuffle, seed=1, sort_by_length=True))


@pytest.mark.parametrize("sort_by_length", [False, True])
def test_distributed_sampler_shards_without_overlap(sort_by_length):
    ds = index_dataset(24)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=3)
        loader = make_dataloader(ds, 4, sampler=sampler, sort_by_length=sort_by_length)
        set_loader_epoch(loader, 2)
        assert sampler.epoch == 2
        labels = sum(order(loader), [])
        assert len(labels) == 12 and len(loader) == 3
        seen.append(set(labels))
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(24))


# ---------------------------------------------------------------- text LM blocks


def test_text_lm_blocks(tmp_path, tokenizer):
    lines = ["The cat sat on the mat.", "", "Dogs bark at night and sleep all day long."] * 5
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    blocks = load_text_lm(str(path), tokenizer, block_size=8)
    stream = []
    for line in lines:
        if line:
            stream += tokenizer(line, add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
    assert blocks.dtype == torch.long and blocks.shape == (len(stream) // 8, 8)
    assert blocks.flatten().tolist() == stream[:blocks.numel()]
    assert torch.equal(load_text_lm(path, tokenizer, block_size=8, max_blocks=2), blocks[:2])


def test_text_lm_errors(tmp_path, tokenizer):
    with pytest.raises(DataError, match="file not found"):
        load_text_lm(tmp_path / "missing.txt", tokenizer, 8)
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="empty.txt: file is empty"):
        load_text_lm(tmp_path / "empty.txt", tokenizer, 8)
    (tmp_path / "short.txt").write_text("hi\n", encoding="utf-8")
    with pytest.raises(DataError, match="fewer than one block"):
        load_text_lm(tmp_path / "short.txt", tokenizer, 64)
    with pytest.raises(DataError, match="block_size"):
        load_text_lm(tmp_path / "short.txt", tokenizer, 1)
