"""The trainable modules of the two compression stages, each one ``nn.Module`` so that DDP, the
optimizers and the checkpoints all see the same set of parameters and buffers.

- ``SearchModule``: student with gates sampled from the width search + KD objective + budget loss.
- ``DistillModule``: the physically pruned student + KD objective.
"""
from __future__ import annotations

import torch
from torch import nn
from ddk_fast.search import ffn_importance_from_weights, head_importance_from_weights


def teacher_outputs(teacher, batch: dict, path: str = "auto", outputs: dict | None = None):
    """Teacher forward without gradients; ``outputs``: the objective's ``forward_kwargs()``."""
    with torch.no_grad():
        return teacher(batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch.get("token_type_ids"), path=path,
                       **(outputs or {"output_hidden_states": True}))


class SearchModule(nn.Module):
    def __init__(self, student, search, budget, objective, cost_model, metric: str, path: str = "auto"):
        super().__init__()
        self.student, self.search, self.budget, self.objective = student, search, budget, objective
        self.cost_model, self.metric, self.path = cost_model, metric, path

    def forward(self, batch: dict, teacher_out, step: int):
        head_gates, ffn_gates = self.search.sample()
        if self.training and self.search.needs_importance:
            # Taylor scores need dL/dgate: keep it on the gates (leaf copies when nothing else needs them)
            if head_gates.requires_grad:
                head_gates.retain_grad()
                ffn_gates.retain_grad()
            else:
                head_gates = head_gates.detach().requires_grad_(True)
                ffn_gates = ffn_gates.detach().requires_grad_(True)
        out = self.student(batch["input_ids"], attention_mask=batch["attention_mask"],
                           token_type_ids=batch.get("token_type_ids"), head_gates=head_gates, ffn_gates=ffn_gates,
                           path=self.path, **self.objective.forward_kwargs())
        kd, parts = self.objective(out, teacher_out, batch)
        ratio = self.search.expected_ratio(self.cost_model, self.metric)
        if self.budget is None:  # the search follows its own schedule
            return kd, parts, ratio, head_gates, ffn_gates
        budget = self.budget(ratio, step)
        parts["budget"] = budget.detach()
        return kd + budget, parts, ratio, head_gates, ffn_gates


class DistillModule(nn.Module):
    def __init__(self, student, objective, path: str = "auto"):
        super().__init__()
        self.student, self.objective, self.path = student, objective, path

    def forward(self, batch: dict, teacher_out):
        out = self.student(batch["input_ids"], attention_mask=batch["attention_mask"],
                           token_type_ids=batch.get("token_type_ids"), path=self.path,
                           **self.objective.forward_kwargs())
        return self.objective(out, teacher_out, batch)


def weight_parameters(module: nn.Module, exclude: list[nn.Parameter]) -> list[tuple[str, nn.Parameter]]:
    """Named trainable parameters of ``module`` except ``exclude`` (the architecture / budget ones)."""
    skip = {id(p) for p in exclude}
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad and id(p) not in skip]


def initial_importance(model) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight-norm rankings of heads and FFN channels (the search's ranking before any gradient)."""
    att = [layer.attention for layer in model.layers]
    heads = head_importance_from_weights([a.output.weight for a in att], model.head_dim,
                                         query_weights=[a.query.weight for a in att],
                                         key_weights=[a.key.weight for a in att],
                                         value_weights=[a.value.weight for a in att])
    ffn = ffn_importance_from_weights([layer.ffn.up.weight for layer in model.layers],
                                      [layer.ffn.down.weight for layer in model.layers])
    return heads, ffn
