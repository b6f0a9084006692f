"""Physical pruning: the sliced model computes what the gated model computes."""
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from ddk_fast.model import MaskedTransformer, Structure, encoder_param_count, prune

ATOL = 1e-5


def tiny_model(num_labels=2):
    config = BertConfig(vocab_size=64, hidden_size=24, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=20, max_position_embeddings=32, num_labels=num_labels,
                        initializer_range=0.3)
    torch.manual_seed(0)
    stock = BertForSequenceClassification(config)
    model = MaskedTransformer.from_pretrained(stock).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial LayerNorms and biases so a misplaced slice shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def batch(b=3, s=10):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (b, s), generator=g)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 2:] = 0
    ids[mask == 0] = 0
    return ids, mask


# layer 0: two heads in odd order positions; layer 1: no heads; layer 2: one channel; layer 3: no channels
STRUCTURE = Structure(heads=((1, 3), (), (0, 1, 2, 3), (2,)),
                      channels=(tuple(range(0, 20, 2)), (4, 5, 19), (7,), ()),
                      total_heads=(4, 4, 4, 4), total_channels=(20, 20, 20, 20))


@pytest.mark.parametrize("path", ["reference", "compact"])
def test_pruned_model_equals_gated_model(path):
    model = tiny_model()
    small = prune(model, STRUCTURE)
    assert small.num_heads == [2, 0, 4, 1] and small.intermediate_sizes == [10, 3, 1, 0]
    assert small.layers[0].attention.query.weight.shape == (12, 24)
    assert small.layers[3].ffn.down.weight.shape == (24, 0)
    ids, mask = batch()
    hg, fg = STRUCTURE.to_gates()
    with torch.no_grad():
        want = model(ids, mask, head_gates=hg, ffn_gates=fg, path=path, output_hidden_states=True,
                     output_attention_probs=True)
        got = small(ids, mask, path=path, output_hidden_states=True, output_attention_probs=True)
    assert torch.allclose(got.logits, want.logits, atol=ATOL, rtol=0)
    for a, b in zip(got.hidden_states, want.hidden_states):
        assert torch.allclose(a, b, atol=ATOL, rtol=0)
    # the pruned model's heads are the kept heads of the gated model, in order
    for layer, heads in enumerate(STRUCTURE.heads):
        assert torch.allclose(got.attention_probs[layer], want.attention_probs[layer][:, list(heads)], atol=ATOL)
    assert encoder_param_count(small) < encoder_param_count(model)
    assert small.pruned_from == STRUCTURE


def test_pruning_twice_composes_and_matches_the_composed_gates():
    model = tiny_model()
    first = prune(model, STRUCTURE)
    inner = Structure(heads=((1,), (), (0, 2), (0,)), channels=((0, 9), (1,), (), ()),
                      total_heads=(2, 0, 4, 1), total_channels=(10, 3, 1, 0))
    second = prune(first, inner)
    composed = STRUCTURE.compose(inner)
    assert second.pruned_from == composed
    assert composed.heads[0] == (3,) and composed.channels[0] == (0, 18) and composed.channels[1] == (5,)
    ids, mask = batch()
    hg, fg = composed.to_gates()
    with torch.no_grad():
        want = model(ids, mask, head_gates=hg, ffn_gates=fg, path="reference").logits
        got = second(ids, mask, path="reference").logits
    assert torch.allclose(got, want, atol=ATOL, rtol=0)


def test_prune_keeps_dtype_mode_and_independent_storage():
    model = tiny_model().double().train()
    small = prune(model, STRUCTURE)
    assert small.training and small.classifier.weight.dtype == torch.float64
    with torch.no_grad():
        small.embeddings.word_embeddings.weight.zero_()
    assert model.embeddings.word_embeddings.weight.abs().sum() > 0


def test_full_structure_prune_is_identity_and_mismatch_is_rejected():
    model = tiny_model()
    same = prune(model, Structure.full(model))
    for (k, a), b in zip(model.state_dict().items(), same.state_dict().values()):
        assert torch.equal(a, b), k
    wrong = Structure.full(same.config.with_widths([4, 4, 4], [20, 20, 20]))
    with pytest.raises(ValueError, match="do not match the model"):
        prune(model, wrong)
