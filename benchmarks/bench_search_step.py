"""One whole width-search training step, ours vs the pure-PyTorch path, at keep ratios 1.0 / 0.75 / 0.5 / 0.25.

The step, in the order the training loop (``ddk_fast.train.compress``) runs it:
  1. sample head / FFN gates from the Gumbel width search (straight-through, exactly 0/1 forward);
  2. teacher forward under no_grad (``ddk_fast.train.stages.teacher_outputs``: hidden states + attention
     scores);
  3. student forward with the gates (hidden states + attention scores), BERT dropout on (train mode);
  4. losses: hidden-state MSE over the L+1 states, attention KL over the L layers, soft cross-entropy
     (T=2), task cross-entropy, and the Lagrangian budget loss on the expected cost ratio;
  5. backward, gradient clipping, Taylor-importance update of the search's unit ranking, AdamW step on
     the student weights and Adam step on the architecture logits and budget multipliers.
The loop exposes no step function (its step is a closure inside the compress run), so the step is
composed here from the same public pieces (model, search, budget, loss ops, the loop's
``teacher_outputs`` and ``adamw``). Loss weights are 1 except task (0.5); the loop's recursive
teacher-layer fusion (a teacher-side transform, the same cost on every path) is left out.

Keep ratio: the architecture logits are pinned (+30 at the candidate ``round(keep * size)``, -30 elsewhere)
so every sampled structure keeps that fraction of each layer's heads and FFN channels; which units
are kept follows the search's own importance ranking, updated every step as in training.

Providers:
  reference      engine path="reference" (full-width math times the gates) + reference losses;
  compact+fused  engine path="compact" (only kept units computed) + fused losses (``ddk_fast._C``);
  triton+fused   engine path="triton" + fused losses (CUDA only);
  compile        the reference step with its *loss part* under ``torch.compile`` (dynamic=False); the
                 engine stays eager. Compiling the reference engine's forward+backward as well took
                 113 s for a 2-layer model at B4 S32 on the shared 2-core CPU (with graph breaks at
                 the padding-mask check), too slow for this suite, so only the losses are compiled.
                 Compilation happens in the untimed warm-up step.

Models: 6-layer MiniLM-shaped BERT (hidden 384, 12 heads, FFN 1536, vocab 30522), random weights,
student = copy of the teacher (as in the loop). Batch B32 S128 with GLUE-like padding (lengths drawn in
[64, 128]); quick mode: 2 layers, B4 S32, vocab 1000, no "compile" case. Full runs time "compile"
at keep 0.5 only (it differs from "reference" only in the keep-independent losses).
Run: python -m pytest benchmarks/bench_search_step.py -q
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from ddk_fast.bench.conventions import tag
from ddk_fast.bench.memory import peak_memory_bytes
from ddk_fast.model import MaskedTransformer, TransformerConfig
from ddk_fast.ops import distill_losses as losses
from ddk_fast.search import CostModel, GumbelWidthSearch, build_budget, taylor_importance
from ddk_fast.train.optim import adamw
from ddk_fast.train.stages import teacher_outputs

KEEPS = (1.0, 0.75, 0.5, 0.25)
PROVIDERS = ("reference", "compact+fused", "triton+fused", "compile")
HIDDEN, HEADS, INTERMEDIATE, VOCAB = 384, 12, 1536, 30522
TEMPERATURE, TASK_WEIGHT, MAX_GRAD_NORM = 2.0, 0.5, 1.0
ROUNDS = 2  # a full step takes 5 to 40 s on a shared 2-core CPU; 2 timed rounds after a warm-up step
COMPILE_KEEPS = (0.5,)  # "compile" differs from "reference" only in the losses, which do not depend on keep


def _sizes(quick: bool) -> tuple[int, int, int, int]:
    """(layers, batch, seq, vocab)."""
    return (2, 4, 32, 1000) if quick else (6, 32, 128, VOCAB)


def _paths(provider: str) -> tuple[str, str]:
    """(engine path, loss path) of a provider."""
    return {"reference": ("reference", "reference"), "compile": ("reference", "reference"),
            "compact+fused": ("compact", "fused"), "triton+fused": ("triton", "fused")}[provider]


def _reference_losses(s_hidden, t_hidden, s_scores, t_scores, s_logits, t_logits, token_mask, hidden_w, attn_w):
    """The KD losses through the plain-PyTorch references (what ``compile`` compiles)."""
    hidden, _ = losses.hidden_distill_loss_reference(s_hidden, t_hidden, hidden_w, token_mask, "mse")
    attention, _ = losses.attention_distill_loss_reference(s_scores, t_scores, attn_w, token_mask, "kl")
    return hidden + attention + losses.soft_cross_entropy_reference(s_logits, t_logits, TEMPERATURE)


_compiled_losses = None


def _loss_fn(provider: str):
    global _compiled_losses
    if provider == "compile":
        if _compiled_losses is None:  # one compiled function per process: same shapes for every keep ratio
            _compiled_losses = torch.compile(_reference_losses, dynamic=False)
        return _compiled_losses
    _, loss_path = _paths(provider)

    def fn(s_hidden, t_hidden, s_scores, t_scores, s_logits, t_logits, token_mask, hidden_w, attn_w):
        return (losses.hidden_distill_loss(s_hidden, t_hidden, hidden_w, token_mask, "mse", path=loss_path,
                                           check_finite=False)
                + losses.attention_distill_loss(s_scores, t_scores, attn_w, token_mask, "kl", path=loss_path,
                                                check_finite=False)
                + losses.soft_cross_entropy(s_logits, t_logits, TEMPERATURE, path=loss_path, check_finite=False))
    return fn


def _pin_logits(logits: torch.Tensor, candidates: torch.Tensor, valid: torch.Tensor, sizes, keep: float):
    """Make the candidate count ``round(keep * size)`` (the nearest valid one) certain in every layer."""
    with torch.no_grad():
        logits.fill_(-30.0)
        for layer, size in enumerate(sizes):
            want = round(keep * size)
            dist = (candidates[layer] - want).abs().masked_fill(~valid[layer], 1 << 30)
            logits[layer, int(dist.argmin())] = 30.0


def _batch(batch: int, seq: int, vocab: int, device) -> dict:
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=gen)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1, vocab, (batch, seq), generator=gen) * mask
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "token_type_ids": torch.zeros_like(ids).to(device),
            "labels": torch.randint(0, 2, (batch,), generator=gen).to(device)}


def make_step(provider: str, keep: float, layers: int, batch: int, seq: int, device, vocab: int = VOCAB):
    """A closure running one whole search step with ``provider``; also returns a shape string."""
    engine_path, _ = _paths(provider)
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=vocab, hidden_size=HIDDEN, head_dim=HIDDEN // HEADS,
                               num_heads=[HEADS] * layers, intermediate_sizes=[INTERMEDIATE] * layers)
    teacher = MaskedTransformer(config).to(device).eval().requires_grad_(False)
    student = copy.deepcopy(teacher).requires_grad_(True).train()
    search = GumbelWidthSearch(student.num_heads, student.intermediate_sizes, granularity=8, tau=1.0).to(device)
    _pin_logits(search.head_logits, search.head_candidates, search.head_candidate_valid, student.num_heads, keep)
    _pin_logits(search.ffn_logits, search.ffn_candidates, search.ffn_candidate_valid, student.intermediate_sizes, keep)
    cost_model = CostModel(HIDDEN, HIDDEN // HEADS, student.num_heads, student.intermediate_sizes, seq_len=seq)
    budget = build_budget("lagrangian", keep, cost_model).to(device)
    w_opt = adamw(student, lr=1e-5, weight_decay=0.01)
    a_opt = torch.optim.Adam([{"params": search.arch_parameters(), "lr": 1e-2},
                              {"params": list(budget.parameters()), "lr": 1e-2}])
    weights = [p for p in student.parameters() if p.requires_grad]
    data = _batch(batch, seq, vocab, device)
    hidden_w = torch.full((layers + 1,), 1.0 / (layers + 1), device=device)
    attn_w = torch.full((layers,), 1.0 / layers, device=device)
    loss_fn = _loss_fn(provider)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    state = {"step": 0}

    def step():
        head_gates, ffn_gates = search.sample()
        head_gates.retain_grad()
        ffn_gates.retain_grad()
        t_out = teacher_outputs(teacher, data, engine_path, want_scores=True)
        s_out = student(data["input_ids"], attention_mask=data["attention_mask"],
                        token_type_ids=data["token_type_ids"], head_gates=head_gates, ffn_gates=ffn_gates,
                        path=engine_path, output_hidden_states=True, output_attention_scores=True)
        loss = loss_fn(list(s_out.hidden_states), list(t_out.hidden_states), list(s_out.attention_scores),
                       list(t_out.attention_scores), s_out.logits, t_out.logits, data["attention_mask"],
                       hidden_w, attn_w)
        loss = loss + TASK_WEIGHT * F.cross_entropy(s_out.logits, data["labels"])
        loss = loss + budget(search.expected_ratio(cost_model), state["step"])
        w_opt.zero_grad(set_to_none=True)
        a_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(weights, MAX_GRAD_NORM)
        search.update_importance(taylor_importance(head_gates), taylor_importance(ffn_gates),
                                 head_active=head_gates.detach() > 0, ffn_active=ffn_gates.detach() > 0)
        w_opt.step()
        a_opt.step()
        state["step"] += 1
        sync()

    kept = search.sample()
    kept_heads, kept_channels = int(kept[0].sum()), int(kept[1].sum())
    shape = f"L{layers} B{batch} S{seq} d{HIDDEN} H{HEADS} I{INTERMEDIATE}"
    return step, shape, (kept_heads, kept_channels)


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_search_step(benchmark, device, is_quick, provider, keep):
    if provider.startswith("triton") and device.type != "cuda":
        pytest.skip("triton is timed on CUDA only")
    if provider == "compile" and (is_quick or keep not in COMPILE_KEEPS):
        pytest.skip("compile is timed at keep 0.5 in full runs only (compiling takes longer than a quick run)")
    layers, batch, seq, vocab = _sizes(is_quick)
    step, shape, (kept_heads, kept_channels) = make_step(provider, keep, layers, batch, seq, device, vocab)
    assert kept_heads == round(keep * HEADS) * layers, "pinned logits did not fix the head count"
    step()  # warm-up: allocator, compilation for "compile", Triton kernels
    tag(benchmark, "search_step", provider, "step", keep, shape, peak_mem_bytes=peak_memory_bytes(step, device),
        kept_heads=kept_heads, kept_channels=kept_channels)
    benchmark.pedantic(step, rounds=1 if is_quick else ROUNDS, iterations=1, warmup_rounds=0)
