"""Structure (kept units per layer) and the exact parameter counts."""
import json

import pytest
import torch

from ddk_fast.model import (MaskedTransformer, Structure, TransformerConfig, attention_params,
                            encoder_param_count, ffn_params, layer_param_counts, prunable_param_count, prune)


def tiny_config(**kw):
    base = dict(vocab_size=40, hidden_size=12, head_dim=3, num_heads=[4, 4, 2], intermediate_sizes=[10, 7, 0],
                max_position_embeddings=32)
    base.update(kw)
    return TransformerConfig(**base)


def test_full_structure_covers_every_unit_of_uneven_layers():
    s = Structure.full(tiny_config())
    assert s.heads == ((0, 1, 2, 3), (0, 1, 2, 3), (0, 1))
    assert s.channels[1] == tuple(range(7)) and s.channels[2] == ()
    assert s.num_heads == [4, 4, 2] and s.intermediate_sizes == [10, 7, 0]
    assert s.is_full() and s.total_kept_heads == 10 and s.total_kept_channels == 17


def test_gates_round_trip_and_counts():
    hg = [torch.tensor([1., 0, 1, 0]), torch.zeros(4), torch.tensor([0., 1])]
    fg = [torch.tensor([0., 0, 0, 1, 0, 0, 0, 0, 0, 1]), torch.ones(7), torch.zeros(0)]
    s = Structure.from_gates(hg, fg)
    assert s.heads == ((0, 2), (), (1,))
    assert s.channels == ((3, 9), tuple(range(7)), ())
    assert s.num_heads == [2, 0, 1] and s.intermediate_sizes == [2, 7, 0] and not s.is_full()
    hg2, fg2 = s.to_gates(dtype=torch.float64)
    for a, b in zip(hg + fg, hg2 + fg2):
        assert b.dtype == torch.float64 and torch.equal(a.double(), b)


def test_from_gates_rejects_soft_gates_and_layer_mismatch():
    with pytest.raises(ValueError, match="must be 0 or 1"):
        Structure.from_gates([torch.tensor([1.0, 0.5])], [torch.ones(3)])
    with pytest.raises(ValueError, match="same count"):
        Structure.from_gates([torch.ones(2)], [torch.ones(3), torch.ones(3)])


def test_indices_are_sorted_and_validated():
    s = Structure(heads=((3, 0),), channels=((2, 1),), total_heads=(4,), total_channels=(5,))
    assert s.heads == ((0, 3),) and s.channels == ((1, 2),)
    with pytest.raises(ValueError, match="out of range"):
        Structure(heads=((4,),), channels=((),), total_heads=(4,), total_channels=(5,))
    with pytest.raises(ValueError, match="duplicates"):
        Structure(heads=((1, 1),), channels=((),), total_heads=(4,), total_channels=(5,))
    with pytest.raises(ValueError, match="layer count"):
        Structure(heads=((1,),), channels=(), total_heads=(4,), total_channels=(5,))


def test_json_round_trip(tmp_path):
    s = Structure(heads=((0, 2), (), (1,)), channels=((3, 9), (0, 1, 2, 3, 4, 5, 6), ()),
                  total_heads=(4, 4, 2), total_channels=(10, 7, 0))
    assert Structure.from_json(s.to_json()) == s
    data = json.loads(s.to_json())
    assert data["layers"][1] == {"heads": [], "channels": list(range(7)), "total_heads": 4, "total_channels": 7}
    s.save(tmp_path / "s.json")
    assert Structure.load(tmp_path / "s.json") == s
    with pytest.raises(ValueError, match="format"):
        Structure.from_dict({"layers": []})


def test_compose_maps_inner_indices_to_the_original():
    outer = Structure(heads=((1, 3), (0, 2, 3)), channels=((0, 4, 5), ()), total_heads=(4, 4), total_channels=(6, 2))
    inner = Structure(heads=((1,), (0, 2)), channels=((0, 2), ()), total_heads=(2, 3), total_channels=(3, 0))
    both = outer.compose(inner)
    assert both.heads == ((3,), (0, 3)) and both.channels == ((0, 5), ())
    assert both.total_heads == (4, 4)
    with pytest.raises(ValueError, match="must equal"):
        outer.compose(Structure.full(tiny_config()))


def test_model_structure_from_gates_and_padded_tensor_gates():
    model = MaskedTransformer(tiny_config())
    assert model.structure() == Structure.full(model)
    padded = torch.zeros(3, 4)
    padded[0, 1] = padded[2, 0] = 1
    s = model.structure(head_gates=padded)
    assert s.heads == ((1,), (), (0,)) and s.channels == Structure.full(model).channels


def _numel(module):
    return sum(p.numel() for p in module.parameters())


def test_param_counts_match_module_numel_including_empty_blocks():
    model = MaskedTransformer(tiny_config())
    counts = layer_param_counts(model)
    for layer, c in zip(model.layers, counts):
        assert c["attention"] == _numel(layer.attention) and c["ffn"] == _numel(layer.ffn)
        assert c["total"] == _numel(layer)
    assert encoder_param_count(model) == _numel(model.layers)
    # after pruning a layer to 0 heads and another to 1 channel, the count still matches the real modules
    s = Structure(heads=((0, 3), (), (1,)), channels=((4,), (0, 6), ()), total_heads=(4, 4, 2),
                  total_channels=(10, 7, 0))
    small = prune(model, s)
    assert encoder_param_count(small) == _numel(small.layers)
    d = 12
    assert encoder_param_count(small) == (attention_params(d, 2, 3) + attention_params(d, 0, 3) + attention_params(d, 1, 3)
                                          + ffn_params(d, 1) + ffn_params(d, 2) + ffn_params(d, 0))
    # what always stays: each block's output bias + LayerNorm
    assert encoder_param_count(model) - prunable_param_count(model) == 3 * 2 * 3 * d
    assert attention_params(d, 0, 3) == 3 * d and ffn_params(d, 0) == 3 * d


def test_param_count_matches_stock_bert_layer():
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer

    cfg = BertConfig(hidden_size=24, num_attention_heads=6, intermediate_size=40)
    layer = BertLayer(cfg)
    assert attention_params(24, 6, 4) + ffn_params(24, 40) == _numel(layer)
