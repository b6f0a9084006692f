"""Peer baseline: TextPruner structured pruning followed by TextBrewer logits distillation.

What it runs. On one fine-tuned BERT teacher (a stock transformers BertForSequenceClassification
folder with its tokenizer, as ``ddk-fast finetune`` writes it) and one GLUE task (mrpc, stsb, sst2,
cola), it

1. evaluates the teacher on dev;
2. prunes a copy with ``textpruner.TransformerPruner`` (iterative, ``n_iters=4``, head and FFN
   importance from the loss gradients on ``--importance-examples`` train examples, batches of 32,
   uneven per-layer masks), keeping the fraction ``--target-params`` of the attention heads and of
   the FFN channels, and physically removes the pruned rows/columns (``keep_shape=False``);
3. evaluates the pruned model without any training;
4. distils it from the teacher with ``textbrewer.BasicDistiller`` for ``--steps`` steps (batch 32,
   AdamW lr 5e-5 with weight decay 0.01, linear schedule with 10 % warmup, gradient clipping 1.0,
   temperature 2, logits KD: soft cross-entropy, or MSE for the regression task stsb, plus the
   hard-label loss weighted by ``--hard-label-weight``), evaluating on dev every ``--eval-every``
   steps and at the end;
5. writes a JSON report: teacher / pruned / per-evaluation / best / final dev scores, the kept
   encoder parameter ratio, heads and FFN channels kept per layer, wall times and all settings.

Why. It is the peer toolchain's score for the tables that put our compression beside it: the data,
the tokenisation, the batching and the metrics come from ``ddk_fast.data`` / ``ddk_fast.runs.batching``,
so only the pruning and distillation methods differ.

Run:
    python benchmarks/peer_textpruner_textbrewer.py --teacher DIR --task mrpc \\
        --data-dir ../shared/data/glue --target-params 0.5 --steps 460 --output OUT.json

Install (the peers' pinned dependencies are old; none of them are needed beyond torch/transformers):
    pip install --no-deps textpruner textbrewer sentencepiece

Adaptations to current libraries (transformers 5):
* TextPruner's last pruning step calls ``BertModel.prune_heads``, which transformers 5 removed. The
  pruner therefore runs all its iterations with ``keep_shape=True`` (pruned weights zeroed); the
  physical removal is then done with TextPruner's own ``reorder_ffn_weights`` /
  ``reorder_attention_heads(mask, keep_shape=False)``, and the modules' size attributes are updated
  to match (transformers 5's BERT attention infers the number of heads from the weight shapes).
* TextBrewer saves a full state dict at every checkpoint; the distiller here only skips that save
  (``_EvalOnlyDistiller``), the training step is TextBrewer's own.
* The training batches are reshuffled each pass over the data (``_EpochReshuffle``), as our runs do.

Loss scale note: TextBrewer's soft cross-entropy is not multiplied by T^2 and its MSE is taken on
logits divided by T, so at T=2 its KD term is 1/4 of ours (``ddk_fast.distill`` uses T^2 * CE and plain
MSE). ``--kd-weight 4`` reproduces our scaling; the default 1 is TextBrewer's stock behaviour.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import random
import sys
import tempfile
import time
from typing import Callable

import numpy as np
import torch
import textbrewer
import textpruner
import transformers
from textbrewer import BasicDistiller, DistillationConfig, TrainingConfig
from textpruner import GeneralConfig, TransformerPruner, TransformerPruningConfig
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

from ddk_fast.data import compute_metrics, encode, get_task, load_task
from ddk_fast.runs.batching import eval_loader, train_loader

log = logging.getLogger("peer_textpruner_textbrewer")


# ------------------------------------------------------------------------------------------ set-up
def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--teacher", required=True, help="fine-tuned BertForSequenceClassification folder")
    p.add_argument("--task", required=True, choices=("mrpc", "stsb", "sst2", "cola"))
    p.add_argument("--data-dir", default=None, help="GLUE folder (MRPC/dev.tsv, ...); default: the hub")
    p.add_argument("--output", required=True, help="JSON report to write")
    p.add_argument("--target-params", type=float, default=0.5,
                   help="fraction of the attention heads and of the FFN channels to keep")
    p.add_argument("--steps", type=int, default=460, help="distillation steps")
    p.add_argument("--eval-every", type=int, default=115, help="dev evaluation every N distillation steps")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--kd-weight", type=float, default=1.0, help="TextBrewer kd_loss_weight")
    p.add_argument("--hard-label-weight", type=float, default=0.5, help="TextBrewer hard_label_weight")
    p.add_argument("--importance-examples", type=int, default=768, help="train examples for TextPruner's importance")
    p.add_argument("--importance-batch-size", type=int, default=32)
    p.add_argument("--n-iters", type=int, default=4, help="TextPruner pruning iterations")
    p.add_argument("--max-seq-len", type=int, default=128)
    p.add_argument("--max-train-examples", type=int, default=None, help="seeded subset of train (testing)")
    p.add_argument("--max-eval-examples", type=int, default=None, help="seeded subset of dev (testing)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if not 0.0 < args.target_params <= 1.0:
        p.error(f"--target-params {args.target_params}: expected a fraction in (0, 1]")
    if args.steps < 1 or args.eval_every < 1:
        p.error("--steps and --eval-every must be positive")
    return args


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def load_data(args, tokenizer) -> dict:
    """Encoded train, dev and importance sets, built by the project's loaders."""
    def encoded(split, max_examples):
        examples = load_task(args.task, split, data_dir=args.data_dir, max_examples=max_examples, seed=args.seed)
        return encode(examples, tokenizer, max_length=args.max_seq_len)

    return {"train": encoded("train", args.max_train_examples),
            "dev": encoded("validation", args.max_eval_examples),
            "importance": encoded("train", args.importance_examples)}


class _EpochReshuffle:
    """An iterable over ``train_loader`` batches that starts a new seeded shuffle on every pass.

    TextBrewer cycles the loader (``for x in loader`` again and again); ddk_fast's batch sampler gives
    the same order until ``set_epoch`` is called, so each new iteration bumps the epoch."""

    def __init__(self, loader):
        self.loader, self.epoch = loader, 0

    def __iter__(self):
        self.loader.batch_sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)

    def __len__(self):
        return len(self.loader)


# ------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(model, dev, task: str, batch_size: int, device) -> dict:
    """Dev metrics of ``model`` (``compute_metrics`` plus ``main``: the task's selection metric)."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for batch in eval_loader(dev, batch_size):
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        logits.append(model(**inputs).logits.float().cpu())
        labels.append(batch["labels"])
    model.train(was_training)
    metrics = compute_metrics(task, torch.cat(logits), torch.cat(labels))
    return {"main": metrics[get_task(task).main_metric], **metrics}


# ------------------------------------------------------------------------------------------ pruning
def count_params(module: torch.nn.Module) -> int:
    """Number of parameters (tensor elements) of ``module``."""
    return sum(p.numel() for p in module.parameters())


def pruning_targets(config, fraction: float) -> tuple[int, int]:
    """(target_num_of_heads, target_ffn_size): per-layer averages keeping ``fraction`` of each."""
    heads = max(1, round(fraction * config.num_attention_heads))
    ffn = max(1, round(fraction * config.intermediate_size))
    return heads, ffn


def loss_adaptor(outputs) -> torch.Tensor:
    """TextPruner adaptor: the model's own task loss (CE, or MSE for stsb) from a batch with labels."""
    return outputs.loss


def shrink_modules(bert, head_mask: torch.Tensor, ffn_mask: torch.Tensor) -> None:
    """Make the module attributes agree with the physically pruned weights.

    ``reorder_*(keep_shape=False)`` replaces the weights by smaller ones but leaves ``nn.Linear``'s
    in/out_features and the attention's head counts as they were; transformers 5's attention reshapes
    with ``-1`` heads, so this is bookkeeping (repr, save, later code), not needed for the forward."""
    head_size = bert.config.hidden_size // bert.config.num_attention_heads
    for layer, heads, ffn in zip(bert.encoder.layer, head_mask.sum(-1).tolist(), ffn_mask.sum(-1).tolist()):
        heads, ffn = int(heads), int(ffn)
        attention = layer.attention.self
        attention.num_attention_heads, attention.all_head_size = heads, heads * head_size
        for linear in (attention.query, attention.key, attention.value):
            linear.out_features = heads * head_size
        layer.attention.output.dense.in_features = heads * head_size
        layer.intermediate.dense.out_features = ffn
        layer.output.dense.in_features = ffn


def check_shapes(bert) -> None:
    """Fail loudly if a pruned layer's weights disagree with each other."""
    for i, layer in enumerate(bert.encoder.layer):
        att = layer.attention
        qkv = {att.self.query.weight.shape[0], att.self.key.weight.shape[0], att.self.value.weight.shape[0],
               att.self.query.bias.shape[0], att.output.dense.weight.shape[1]}
        ffn = {layer.intermediate.dense.weight.shape[0], layer.intermediate.dense.bias.shape[0],
               layer.output.dense.weight.shape[1]}
        if len(qkv) != 1 or len(ffn) != 1:
            raise RuntimeError(f"layer {i}: inconsistent pruned shapes (attention {qkv}, ffn {ffn})")


def prune(model, importance_set, args, workdir: str) -> dict:
    """Prune ``model`` in place with TextPruner (iterative, uneven masks) and shrink it physically.

    Returns the masks' per-layer counts and the encoder parameter counts before and after."""
    heads, ffn = pruning_targets(model.config, args.target_params)
    encoder_before = count_params(model.bert.encoder)
    pruner = TransformerPruner(
        model,
        transformer_pruning_config=TransformerPruningConfig(
            target_ffn_size=ffn, target_num_of_heads=heads, pruning_method="iterative",
            head_even_masking=False, ffn_even_masking=False, n_iters=args.n_iters),
        general_config=GeneralConfig(use_device=args.device, output_dir=workdir))
    loader = eval_loader(importance_set, args.importance_batch_size)
    # keep_shape=True: the last iteration would otherwise call BertModel.prune_heads (gone in transformers 5)
    pruner.prune(dataloader=loader, adaptor=loss_adaptor, keep_shape=True, save_model=False)
    head_mask = pruner.head_mask.to(torch.float32)
    ffn_mask = pruner.ffn_mask.to(torch.float32)
    pruner.reorder_ffn_weights(ffn_mask.to(args.device), keep_shape=False)
    pruner.reorder_attention_heads(head_mask.to(args.device), keep_shape=False)
    shrink_modules(model.bert, head_mask, ffn_mask)
    check_shapes(model.bert)
    model.zero_grad(set_to_none=True)
    encoder_after = count_params(model.bert.encoder)
    return {
        "target_num_of_heads": heads, "target_ffn_size": ffn,
        "heads_per_layer": [int(h) for h in head_mask.sum(-1).tolist()],
        "ffn_per_layer": [int(f) for f in ffn_mask.sum(-1).tolist()],
        "encoder_params_before": encoder_before, "encoder_params_after": encoder_after,
        "kept_encoder_param_ratio": encoder_after / encoder_before,
        "model_params_after": count_params(model),
    }


# ------------------------------------------------------------------------------------------ distillation
def kd_adaptor(batch, outputs) -> dict:
    """TextBrewer adaptor: logits for the KD term, the model's hard-label loss for ``losses``."""
    return {"logits": outputs.logits, "losses": outputs.loss}


class _EvalOnlyDistiller(BasicDistiller):
    """BasicDistiller whose checkpoints only run the callback (no state-dict file per checkpoint)."""

    def save_and_callback(self, global_step, step, epoch, callback):
        if callback is not None:
            callback(model=self.model_S, step=global_step)
            self.model_S.train()


def adamw(model, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on every parameter except biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(param)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def distil(student, teacher, data: dict, args, workdir: str,
           on_eval: Callable[[int, dict, float], None]) -> float:
    """Distil ``student`` from ``teacher`` with TextBrewer; calls ``on_eval(step, scores, seconds)`` at
    every checkpoint. Returns the seconds spent in evaluations."""
    spec = get_task(args.task)
    eval_seconds = [0.0]

    def callback(model, step):
        start = time.perf_counter()
        scores = evaluate(model, data["dev"], args.task, args.eval_batch_size, args.device)
        eval_seconds[0] += time.perf_counter() - start
        on_eval(step, scores, time.perf_counter() - start)

    train_config = TrainingConfig(device=args.device, output_dir=workdir, log_dir=None, ckpt_steps=args.eval_every)
    distill_config = DistillationConfig(temperature=args.temperature, kd_loss_type="mse" if spec.is_regression else "ce",
                                        kd_loss_weight=args.kd_weight, hard_label_weight=args.hard_label_weight)
    distiller = _EvalOnlyDistiller(train_config, distill_config, model_T=teacher, model_S=student,
                                   adaptor_T=kd_adaptor, adaptor_S=kd_adaptor)
    optimizer = adamw(student, args.lr, args.weight_decay)
    batches = _EpochReshuffle(train_loader(data["train"], args.batch_size, seed=args.seed))
    schedule = {"num_warmup_steps": int(round(args.warmup_ratio * args.steps)), "num_training_steps": args.steps}
    with distiller:
        distiller.train(optimizer, batches, num_steps=args.steps, scheduler_class=get_linear_schedule_with_warmup,
                        scheduler_args=schedule, max_grad_norm=args.max_grad_norm, callback=callback)
    return eval_seconds[0]


# ------------------------------------------------------------------------------------------ main
def timed(fn: Callable, *a, **kw):
    """(fn(*a, **kw), seconds)."""
    start = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - start


def settings(args, spec) -> dict:
    """The run's settings for the report."""
    return {
        "seed": args.seed, "steps": args.steps, "eval_every": args.eval_every, "batch_size": args.batch_size,
        "eval_batch_size": args.eval_batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
        "warmup_ratio": args.warmup_ratio, "schedule": "linear", "optimizer": "AdamW",
        "max_grad_norm": args.max_grad_norm, "temperature": args.temperature,
        "kd_loss_type": "mse" if spec.is_regression else "ce", "kd_weight": args.kd_weight,
        "hard_label_weight": args.hard_label_weight, "target_params": args.target_params,
        "importance_examples": args.importance_examples, "importance_batch_size": args.importance_batch_size,
        "pruning_method": "iterative", "n_iters": args.n_iters, "head_even_masking": False,
        "ffn_even_masking": False, "max_seq_len": args.max_seq_len,
        "max_train_examples": args.max_train_examples, "max_eval_examples": args.max_eval_examples,
        "threads": args.threads, "device": args.device,
        "versions": {"textpruner": textpruner.__version__, "textbrewer": textbrewer.__version__,
                     "transformers": transformers.__version__, "torch": torch.__version__},
    }


def run(args) -> dict:
    """All stages; returns the report."""
    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    spec = get_task(args.task)
    total_start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher).to(args.device).eval()
    if teacher.config.num_labels != spec.num_labels:
        raise SystemExit(f"--teacher {args.teacher}: {teacher.config.num_labels} outputs, {args.task} needs "
                         f"{spec.num_labels}")
    data = load_data(args, tokenizer)
    log.info("data: %d train, %d dev, %d importance examples", len(data["train"]), len(data["dev"]),
             len(data["importance"]))
    teacher_scores, t_teacher = timed(evaluate, teacher, data["dev"], args.task, args.eval_batch_size, args.device)
    log.info("teacher dev: %s", teacher_scores)

    student = copy.deepcopy(teacher)
    evals = []

    def on_eval(step, scores, seconds):
        evals.append({"step": step, **scores, "eval_s": seconds})
        log.info("step %d dev: %s", step, scores)

    with tempfile.TemporaryDirectory(prefix="peer_tp_tb_") as workdir:
        set_seed(args.seed)
        pruning, t_prune = timed(prune, student, data["importance"], args, os.path.join(workdir, "textpruner"))
        log.info("pruned: heads %s, ffn %s, kept encoder params %.4f", pruning["heads_per_layer"],
                 pruning["ffn_per_layer"], pruning["kept_encoder_param_ratio"])
        pruned_scores, t_pruned_eval = timed(evaluate, student, data["dev"], args.task, args.eval_batch_size,
                                             args.device)
        log.info("pruned dev (no training): %s", pruned_scores)
        set_seed(args.seed)
        kd_eval_s, t_kd = timed(distil, student, teacher, data, args, os.path.join(workdir, "textbrewer"), on_eval)

    best = max(evals, key=lambda e: e["main"])
    return {
        "task": args.task, "main_metric": spec.main_metric, "teacher_path": os.path.abspath(args.teacher),
        "examples": {k: len(v) for k, v in data.items()},
        "teacher": teacher_scores, "pruned": pruned_scores,
        "kd_evals": evals, "kd_best": best, "kd_final": evals[-1],
        "kept_encoder_param_ratio": pruning["kept_encoder_param_ratio"],
        "pruning": pruning,
        "teacher_params": count_params(teacher),
        "wall_s": {"teacher_eval": t_teacher, "pruning": t_prune, "pruned_eval": t_pruned_eval,
                   "kd_train": t_kd - kd_eval_s, "kd_eval": kd_eval_s, "kd_total": t_kd,
                   "total": time.perf_counter() - total_start},
        "settings": settings(args, spec),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
    }


def main(argv=None) -> None:
    """Parse, run, write the JSON report."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    report = run(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    log.info("wrote %s (best %s %.4f, final %.4f)", args.output, report["main_metric"], report["kd_best"]["main"],
             report["kd_final"]["main"])


if __name__ == "__main__":
    main()
