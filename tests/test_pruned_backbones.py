"""Pruning and export of both backbones (BERT family and GPT-2), pinned tensor by tensor.

Each pruned weight must be exactly the kept slice of the original, written out here independently of
``prune``: Q/K/V rows and output-projection columns by whole head_dim blocks of the kept heads, FFN up
rows and down columns by the kept channels, every other tensor copied. The pruned model must compute
what the gated model computes, and its exported folder must hold exactly its tensors (names mapped,
shapes kept) and load back to identical logits.
"""
import json
import os
import re

import pytest
import torch
from safetensors.torch import load_file

from ddk_fast.export import load_causal_lm, load_pruned, save_causal_lm, save_pruned
from ddk_fast.model import MaskedGPT2, MaskedTransformer, Structure, TransformerConfig, prune, prune_gpt2, write_back

HIDDEN, HEAD_DIM, HEADS, WIDTH, VOCAB = 24, 6, 4, 20, 53
# layer 0: heads out of order with gaps; layer 1: no heads; layer 2: one channel; layer 3: no channels
STRUCTURE = Structure(heads=((1, 3), (), (0, 1, 2, 3), (2,)),
                      channels=(tuple(range(0, WIDTH, 3)), (4, 5, 19), (7,), ()),
                      total_heads=(HEADS,) * 4, total_channels=(WIDTH,) * 4)
PRUNE = {"bert": prune, "gpt2": prune_gpt2}
_HEAD_ROWS = re.compile(r"^layers\.(\d+)\.attention\.(query|key|value)\.(weight|bias)$")
_HEAD_COLS = re.compile(r"^layers\.(\d+)\.attention\.output\.weight$")
_CHANNEL_ROWS = re.compile(r"^layers\.(\d+)\.ffn\.up\.(weight|bias)$")
_CHANNEL_COLS = re.compile(r"^layers\.(\d+)\.ffn\.down\.weight$")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _config(family: str) -> TransformerConfig:
    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, head_dim=HEAD_DIM, num_heads=[HEADS] * 4,
                  intermediate_sizes=[WIDTH] * 4, max_position_embeddings=32, initializer_range=0.3)
    if family == "gpt2":
        return TransformerConfig(family="gpt2", causal=True, type_vocab_size=0, hidden_act="gelu_tanh",
                                 layer_norm_eps=1e-5, **common)
    return TransformerConfig(num_labels=3, **common)


def _random_model(family: str):
    torch.manual_seed(0)
    model = (MaskedGPT2 if family == "gpt2" else MaskedTransformer)(_config(family)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial LayerNorms and biases, so a misplaced slice shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def _kept_slice(key: str, tensor: torch.Tensor, structure: Structure) -> torch.Tensor:
    """What ``prune`` must leave of the original tensor ``key``."""
    for pattern, dim, units in ((_HEAD_ROWS, 0, "heads"), (_HEAD_COLS, 1, "heads"),
                                (_CHANNEL_ROWS, 0, "channels"), (_CHANNEL_COLS, 1, "channels")):
        match = pattern.match(key)
        if match:
            layer = int(match.group(1))
            if units == "heads":
                index = [h * HEAD_DIM + d for h in structure.heads[layer] for d in range(HEAD_DIM)]
            else:
                index = list(structure.channels[layer])
            return tensor.index_select(dim, torch.tensor(index, dtype=torch.long))
    return tensor


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    return ids, mask


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_pruned_tensors_are_the_kept_slices_and_logits_match_the_gates(family):
    model = _random_model(family)
    small = PRUNE[family](model, STRUCTURE)
    assert type(small) is type(model)
    assert small.num_heads == [2, 0, 4, 1] and small.intermediate_sizes == [7, 3, 1, 0]
    before, after = model.state_dict(), small.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], _kept_slice(key, value, STRUCTURE)), key
    ids, mask = _batch()
    hg, fg = STRUCTURE.to_gates()
    with torch.no_grad():
        gated = model(ids, mask, head_gates=hg, ffn_gates=fg, path="reference").logits
        pruned = small(ids, mask, path="reference").logits
    torch.testing.assert_close(pruned, gated, atol=1e-5, rtol=0)
    assert small.pruned_from == STRUCTURE


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_export_holds_exactly_the_pruned_tensors_and_loads_back_identical(family, tmp_path):
    small = PRUNE[family](_random_model(family), STRUCTURE)
    save, load = (save_causal_lm, load_causal_lm) if family == "gpt2" else (save_pruned, load_pruned)
    folder = save(small, tmp_path / "out")
    saved = load_file(os.path.join(folder, "model.safetensors"))

    def exported_name(key: str) -> str:  # BERT's classifier sits beside the encoder, everything else under model.
        return key if family == "bert" and key.startswith("classifier.") else "model." + key

    own = small.state_dict()
    assert sorted(saved) == sorted(exported_name(k) for k in own)
    for key, value in own.items():
        assert torch.equal(saved[exported_name(key)], value), key
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert config["num_heads"] == [2, 0, 4, 1] and config["intermediate_sizes"] == [7, 3, 1, 0]
    back = load(folder).eval()
    assert back.pruned_from == STRUCTURE and type(back) is type(small)
    ids, mask = _batch()
    with torch.no_grad():
        assert torch.equal(back(ids, mask).logits, small(ids, mask).logits)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_layer_cuts_name_exactly_the_tensors_whose_shape_follows_the_kept_units(family):
    model = _random_model(family)
    narrower = type(model)(model.config.with_widths([1] * 4, [1] * 4))
    full, small = model.state_dict(), narrower.state_dict()
    width_dependent = {k for k in full if k.startswith("layers.0.") and full[k].shape != small[k].shape}
    assert {f"layers.0.{cut.name}" for cut in model.layer_cuts} == width_dependent
    assert prune_gpt2 is prune  # the older GPT-2 name is the same function


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_write_back_is_the_inverse_of_prune_on_the_kept_units(family):
    small = prune(_random_model(family), STRUCTURE)
    with torch.no_grad():
        for p in small.parameters():
            p.mul_(1.5)
    full = _random_model(family)
    untouched = full.layers[1].attention.query.weight.clone()  # layer 1 keeps no heads
    again = prune(write_back(full, small), STRUCTURE).state_dict()
    for key, value in small.state_dict().items():
        assert torch.equal(again[key], value), key
    assert torch.equal(full.layers[1].attention.query.weight, untouched)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_export_refuses_extra_files_named_like_its_own(family, tmp_path):
    model = _random_model(family)
    save, modeling_file = (save_causal_lm, "modeling_ddk_gpt2.py") if family == "gpt2" else \
        (save_pruned, "modeling_ddk_bert.py")
    for name in ("config.json", modeling_file, "structure.json"):
        with pytest.raises(ValueError, match="would overwrite a file the export writes itself"):
            save(model, tmp_path / "out", extra_files={name: "x"})
    assert list(tmp_path.iterdir()) == []
