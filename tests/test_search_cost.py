"""Cost model against the real thing: numel() and the FLOP counter of a transformers BertLayer."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertLayer
from transformers.pytorch_utils import prune_linear_layer

from ddk_fast.search import CostModel

pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")

HIDDEN, HEADS, HEAD_DIM, INTER = 24, 4, 6, 44


def _layer():
    cfg = BertConfig(hidden_size=HIDDEN, num_attention_heads=HEADS, intermediate_size=INTER, num_hidden_layers=1,
                     attn_implementation="eager")
    return BertLayer(cfg).eval()


def _slice(layer, keep_heads, keep_channels):
    """Physically remove heads and FFN channels, as a pruned checkpoint would have them."""
    rows = torch.tensor([h * HEAD_DIM + j for h in keep_heads for j in range(HEAD_DIM)], dtype=torch.long)
    att = layer.attention.self
    for name in ("query", "key", "value"):
        setattr(att, name, prune_linear_layer(getattr(att, name), rows, dim=0))
    layer.attention.output.dense = prune_linear_layer(layer.attention.output.dense, rows, dim=1)
    att.num_attention_heads = len(keep_heads)
    att.all_head_size = len(keep_heads) * HEAD_DIM
    chans = torch.tensor(keep_channels, dtype=torch.long)
    layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, chans, dim=0)
    layer.output.dense = prune_linear_layer(layer.output.dense, chans, dim=1)
    return layer


def _numel(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("heads,channels", [(HEADS, INTER), (2, 17), (1, 0), (0, 5), (0, 0)])
def test_params_match_numel_of_a_bert_layer(heads, channels):
    cm = CostModel(HIDDEN, HEAD_DIM, [HEADS], [INTER], metric="params")
    layer = _slice(_layer(), list(range(HEADS))[-heads:] if heads else [], list(range(channels)))
    assert cm.layer_cost("params", heads, channels) == _numel(layer)
    assert cm.structure_cost([heads], [channels]) == _numel(layer)


def test_full_and_min_cost_of_a_stack():
    cm = CostModel(HIDDEN, HEAD_DIM, [HEADS] * 3, [INTER] * 3)
    assert cm.full_cost() == 3 * _numel(_layer())
    # zero heads and channels still keep two output biases and two LayerNorms per layer
    assert cm.min_cost() == 3 * (2 * HIDDEN + 4 * HIDDEN)
    assert cm.min_ratio() == pytest.approx(cm.min_cost() / cm.full_cost())


@pytest.mark.parametrize("heads,channels,seq", [(HEADS, INTER, 7), (3, 9, 5), (1, 0, 3)])
def test_flops_match_torch_flop_counter(heads, channels, seq):
    cm = CostModel(HIDDEN, HEAD_DIM, [HEADS], [INTER], seq_len=seq, metric="flops")
    layer = _slice(_layer(), list(range(heads)), list(range(channels)))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        layer(torch.randn(1, seq, HIDDEN))
    assert cm.layer_cost("flops", heads, channels) == counter.get_total_flops()


def test_flops_by_hand_tiny_case():
    # d=4, D=2, k=1 head, n=3 channels, S=5, counted term by term (2 * multiply-adds)
    cm = CostModel(hidden=4, head_dim=2, num_heads=[2], intermediate=[3], seq_len=5)
    qkv = 2 * 5 * 4 * (3 * 2)      # 240
    scores = 2 * 5 * 5 * 2         # 100
    context = 2 * 5 * 5 * 2        # 100
    out = 2 * 5 * 2 * 4            # 80
    ffn = 2 * 5 * 4 * 3 * 2        # 240
    assert cm.layer_cost("flops", 1, 3) == qkv + scores + context + out + ffn == 760
    assert cm.layer_cost("flops", 0, 0) == 0


def test_expected_cost_is_linear_in_probabilities_and_differentiable():
    cm = CostModel(HIDDEN, HEAD_DIM, [HEADS, HEADS], [INTER, INTER])
    head_counts = torch.arange(HEADS + 1).expand(2, -1)
    ffn_counts = torch.tensor([[0, 8, 16, 24, 32, 40, 44]] * 2)
    logits_h = torch.randn(2, HEADS + 1, requires_grad=True)
    logits_f = torch.randn(2, 7, requires_grad=True)
    ph, pf = logits_h.softmax(-1), logits_f.softmax(-1)
    expected = cm.expected_cost(ph, head_counts, pf, ffn_counts)
    by_hand = 0.0
    for l in range(2):
        by_hand += sum(ph[l, a].item() * cm.attention_cost(a) for a in range(HEADS + 1))
        by_hand += sum(pf[l, j].item() * cm.ffn_cost(int(ffn_counts[l, j])) for j in range(7))
    assert expected.item() == pytest.approx(by_hand, rel=1e-6)
    expected.backward()
    assert logits_h.grad.abs().sum() > 0 and logits_f.grad.abs().sum() > 0


def test_from_config_reads_pruned_heads():
    cfg = BertConfig(hidden_size=HIDDEN, num_attention_heads=HEADS, intermediate_size=INTER, num_hidden_layers=2,
                     pruned_heads={1: [0, 2]})
    cm = CostModel.from_config(cfg, seq_len=16)
    assert cm.num_heads == [HEADS, HEADS - 2] and cm.intermediate == [INTER, INTER] and cm.head_dim == HEAD_DIM


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="metric"):
        CostModel(HIDDEN, HEAD_DIM, [HEADS], [INTER], metric="latency")
    with pytest.raises(ValueError, match="intermediate"):
        CostModel(HIDDEN, HEAD_DIM, [HEADS, HEADS], [INTER])
    cm = CostModel(HIDDEN, HEAD_DIM, [HEADS], [INTER])
    with pytest.raises(ValueError, match="exceed"):
        cm.structure_cost([HEADS + 1], [INTER])


def test_from_config_of_the_masked_model_config_and_structure_hand_off():
    from ddk_fast.model.config import TransformerConfig
    from ddk_fast.model.params import encoder_param_count
    from ddk_fast.search import DerivedStructure

    cfg = TransformerConfig(vocab_size=50, hidden_size=HIDDEN, head_dim=HEAD_DIM, num_heads=[HEADS, 2],
                            intermediate_sizes=[INTER, 9])
    cm = CostModel.from_config(cfg)
    assert cm.num_heads == [HEADS, 2] and cm.intermediate == [INTER, 9]
    assert cm.full_cost() == encoder_param_count(cfg)
    structure = DerivedStructure(heads=[[1, 3], []], ffn=[list(range(5)), [8]]).to_structure(cfg)
    assert structure.num_heads == [2, 0] and structure.intermediate_sizes == [5, 1]
    assert list(structure.total_heads) == [HEADS, 2]
