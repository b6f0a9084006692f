"""DDK compression of a causal LM (GPT-2): ``ddk-fast compress --task lm --teacher DIR --train-file F --eval-file F``.

The same engine as the GLUE pipeline, with the causal pieces swapped in:
(1) the teacher is a stock GPT-2 checkpoint read into ``MaskedGPT2`` (frozen); the student is a copy;
(2) search: Gumbel width search over heads and FFN channels of every layer, gates sampled each step,
    loss = KD objective (``KDObjective``, task type "lm": token-level soft CE on the LM logits over real
    tokens, recursive-fusion hidden MSE, next-token CE, plus any hidden / attention / MaKD aspects) +
    budget loss (Lagrangian), architecture parameters on their own optimizer, Taylor importance;
(3) derive the structure within the budget, prune physically (``ddk_fast.model.prune``);
(4) distill the pruned student with the same objective;
(5) evaluate perplexity (teacher, pruned before distillation, student, and an untrained model of the
    student's shape), export with ``save_causal_lm`` (loads with AutoModelForCausalLM +
    trust_remote_code) and report.json.
Runs are step-based (``--search-steps``, ``--distill-steps``), checkpointed every ``--save-steps`` and at the
search/distill boundary, and continue with ``--resume`` exactly where they stopped.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ddk_fast.distill.objectives import DEFAULTS as KD_DEFAULTS, KDObjective
from ddk_fast.errors import UserError
from ddk_fast.model import Structure
from ddk_fast.model.gpt2 import MaskedGPT2
from ddk_fast.model.pruning import prune
from ddk_fast.search import CostModel, TemperatureSchedule, build_budget, build_search
from ddk_fast.search.importance import taylor_importance
from ddk_fast.runs import shared_options as shared
from ddk_fast.pipelines.configs import CompressConfig
from ddk_fast.runs.config import build_config, config_dict, load_yaml, parse_kd
from ddk_fast.runs.checkpointer import Checkpointer
from ddk_fast.runs.ddp import DistContext, resolve_device
from ddk_fast.runs.evaluation import to_device
from ddk_fast.runs.logging import RunLogger
from ddk_fast.runs.loop import FiniteWatch, RunHooks, TrainLoop, skip_batches
from ddk_fast.runs.optim import adamw, linear_schedule
from ddk_fast.runs.options import NON_NEGATIVE, POSITIVE, check_fields, flag_of, like, option
from ddk_fast.runs.resumable import publish
from ddk_fast.runs.rundir import finished_result, prepare, run_dirs
from ddk_fast.runs.stages import initial_importance
from ddk_fast.pipelines.distill import KDStage, is_lm_task, load_teacher_for, task_data
from ddk_fast.runs.threads import apply_threads
from ddk_fast.runs.validate import parse_target

DEFAULT_KD = {"pred_weight": 1.0, "temperature": 2.0, "hidden_weight": 1.0, "mapping": "fusion",
              "layer_weighting": "adaptive", "task_weight": 0.5}


def _compress(name: str, default=dataclasses.MISSING, default_factory=dataclasses.MISSING):
    """``compress``'s option ``name`` with the LM run's default: one flag for both pipelines."""
    return like(CompressConfig, name, default, default_factory)


@dataclass
class LMCompressConfig:
    """``compress --task lm``: the flags are ``compress``'s (with these defaults) plus the LM-only ones."""

    teacher: str = _compress("teacher", "")
    output: str = _compress("output", "")
    train_file: str = _compress("train_file", "")
    eval_file: str = option("", group="lm", help="--task lm: plain-text evaluation file (perplexity)")
    task: str = _compress("task", "lm")
    target: str = _compress("target", "params=0.5")
    preset: str = _compress("preset", "full")
    block_size: int = option(128, group="lm", minimum=POSITIVE, help="--task lm: tokens per training block")
    batch_size: int = _compress("batch_size", 16)
    eval_batch_size: int = _compress("eval_batch_size", 32)
    max_train_examples: Optional[int] = _compress("max_train_examples", None)  # blocks
    max_eval_examples: Optional[int] = _compress("max_eval_examples", None)
    search_steps: int = option(1000, group="lm", minimum=POSITIVE,
                               help="--task lm: optimizer steps of the structure search")
    distill_steps: int = option(2000, group="lm", minimum=NON_NEGATIVE,
                                help="--task lm: optimizer steps of distillation after pruning")
    lr: float = _compress("lr", 1e-4)
    arch_lr: float = _compress("arch_lr", 0.05)
    lambda_lr: float = _compress("lambda_lr", 0.05)
    weight_decay: float = _compress("weight_decay", 0.01)
    warmup_ratio: float = _compress("warmup_ratio", 0.05)
    max_grad_norm: float = _compress("max_grad_norm", 1.0)
    tau_start: float = _compress("tau_start", 5.0)
    tau_end: float = _compress("tau_end", 0.5)
    channel_granularity: int = _compress("channel_granularity", 64)
    importance_momentum: float = _compress("importance_momentum", 0.9)
    budget_kind: str = _compress("budget_kind", "lagrangian")
    seed: int = _compress("seed", 42)
    device: str = _compress("device", "auto")
    threads: Optional[int] = _compress("threads", None)
    path: str = _compress("path", "auto")
    log_steps: int = _compress("log_steps", 50)
    save_steps: int = _compress("save_steps", 200)
    overwrite: bool = _compress("overwrite", False)
    resume: bool = _compress("resume", False)
    keep_checkpoints: bool = _compress("keep_checkpoints", False)
    progress: bool = _compress("progress", True)
    stop_after_steps: Optional[int] = shared.stop_after_steps()
    kd: dict = _compress("kd", default_factory=lambda: dict(DEFAULT_KD))


def build_lm_config(flags: dict, config_file: Optional[str] = None) -> LMCompressConfig:
    """defaults < preset < YAML file < flags given (None = not given). ``kd`` merges key by key; the file's
    KD options of ``compress`` (``temperature``, ``hidden_loss``...) count as ``kd`` keys, as the flags do."""
    return build_config(LMCompressConfig, "compress-lm", flags, config_file, rewrite=_kd_options_into_kd)


def validate(cfg: LMCompressConfig) -> tuple[str, float]:
    for flag, value in (("--teacher", cfg.teacher), ("--output", cfg.output), ("--train-file", cfg.train_file),
                        ("--eval-file", cfg.eval_file)):
        if not value:
            raise UserError(f"{flag} is required with --task lm")
    metric, ratio = parse_target(cfg.target)
    if metric == "latency":
        raise UserError(f"--target {cfg.target}: a latency budget is measured for encoders (GLUE tasks); with --task lm "
                        "use params=RATIO or flops=RATIO")
    if getattr(cfg, "onnx", False):
        raise UserError("--onnx with --task lm: export the result with `ddk-fast export-onnx OUT --output DIR`")
    check_fields(cfg)
    return metric, ratio


# ------------------------------------------------------------------------------------------ stages
SEARCH, DISTILL = "search", "distill"


class _LMCompression:
    """One LM compression run. ``self.state`` is what a checkpoint restores besides tensors, optimizers
    and RNG: the stage, steps done in it, the teacher's and the pruned student's perplexity, the structure.

    Checkpoints go to ``OUT.inprogress/checkpoints`` every ``save_steps`` and at the search/distill
    boundary; the training blocks come from a seeded endless iterator, so a resumed run skips the
    batches already consumed and continues bit for bit (the same thread count assumed)."""

    def __init__(self, cfg: LMCompressConfig, metric: str, ratio: float, teacher, tokenizer, data, cost_model, dirs,
                 device, mode: str, threads: dict):
        self.cfg, self.metric, self.ratio, self.threads = cfg, metric, ratio, threads
        self.teacher, self.tokenizer, self.data, self.cost_model = teacher, tokenizer, data, cost_model
        self.dirs, self.device, self.mode = dirs, device, mode
        self.log = RunLogger(dirs.logs, enabled=True, console=cfg.progress)
        self.ctx = DistContext(device=device)
        self.checkpoints = Checkpointer(dirs, "compress-lm", cfg, self.log, self.ctx)
        self.hooks = RunHooks.of(cfg)
        self.state: dict[str, Any] = {"stage": SEARCH, "step": 0, "teacher_dev": None, "pruned_dev": None,
                                      "structure": None, "search_summary": None, "history": []}

    # --- top level ------------------------------------------------------------------------------------
    def run(self) -> dict:
        try:
            resumed = self.checkpoints.load() if self.mode == "resume" else None
            if resumed is not None:
                self.state.update(resumed.state)
            self.log.log("start", step=self._global_step(), mode=self.mode, task="lm", teacher=self.cfg.teacher,
                         target=self.cfg.target, train_blocks=self.data.num_train, eval_blocks=self.data.num_dev,
                         threads=self.threads, config=config_dict(self.cfg))
            if self.state["teacher_dev"] is None:
                self.state["teacher_dev"] = self.data.evaluate(self.teacher)
            skip_batches(self.data.batches, self._global_step())
            if self.state["stage"] == SEARCH:
                self._search_stage(resumed)
                resumed = None
            return self._distill_and_finish(resumed)
        finally:
            self.log.close()

    def _global_step(self) -> int:
        return self.state["step"] + (self.cfg.search_steps if self.state["stage"] == DISTILL else 0)

    def _save(self, module, optimizers: dict, schedulers: dict) -> None:
        self.checkpoints.save(self._global_step(), self.state, module, optimizers, schedulers)

    def _objective(self, student):
        try:
            return KDObjective.from_config(dict(self.cfg.kd, path=self.cfg.path), student, self.teacher,
                                           "lm").to(self.device)
        except ValueError as exc:
            raise UserError(str(exc)) from None

    # --- search ---------------------------------------------------------------------------------------
    def _search_stage(self, resumed) -> None:
        """Gumbel width search with KD + budget, then derive, prune and checkpoint the boundary."""
        cfg, device, teacher = self.cfg, self.device, self.teacher
        student = copy.deepcopy(teacher).requires_grad_(True).train()
        heads_imp, ffn_imp = initial_importance(student)
        search = build_search("gumbel", student.num_heads, student.intermediate_sizes,
                              granularity=cfg.channel_granularity, importance_momentum=cfg.importance_momentum,
                              tau=cfg.tau_start, init="full", head_importance=heads_imp,
                              ffn_importance=ffn_imp).to(device)
        try:
            budget = build_budget(cfg.budget_kind, self.ratio, self.cost_model, metric=self.metric).to(device)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        objective = self._objective(student)
        module = torch.nn.ModuleDict({"student": student, "search": search, "budget": budget,
                                      "objective": objective})
        named = [(f"student.{n}", p) for n, p in student.named_parameters()]
        named += [(f"objective.{n}", p) for n, p in objective.named_parameters()]
        weights = [p for _, p in named]
        w_opt = adamw(named, cfg.lr, cfg.weight_decay)
        groups = [{"params": list(search.arch_parameters()), "lr": cfg.arch_lr, "weight_decay": 0.0}]
        lam = list(budget.parameters())
        if lam:
            groups.append({"params": lam, "lr": cfg.lambda_lr, "weight_decay": 0.0})
        a_opt = torch.optim.Adam(groups)
        w_sched = linear_schedule(w_opt, cfg.search_steps, cfg.warmup_ratio)
        optimizers, schedulers = {"weights": w_opt, "arch": a_opt}, {"weights": w_sched}
        if resumed is not None:
            self.checkpoints.restore(resumed, module, optimizers, schedulers)
        tau_of = TemperatureSchedule(cfg.tau_start, min(cfg.tau_end, cfg.tau_start), max(1, cfg.search_steps))
        kw = objective.forward_kwargs()
        search.train()
        watch = FiniteWatch(self.ctx, self.dirs.checkpoints, self.log, stage=SEARCH)

        def step(batch, count, epoch):
            batch = to_device(batch, device)
            tau = tau_of(count - 1)
            search.set_temperature(tau)
            hg, fg = search.sample()
            if hg.requires_grad:
                hg.retain_grad()
                fg.retain_grad()
            with torch.no_grad():
                t_out = teacher(batch["input_ids"], attention_mask=batch["attention_mask"], path=cfg.path, **kw)
            s_out = student(batch["input_ids"], attention_mask=batch["attention_mask"], head_gates=hg,
                            ffn_gates=fg, path=cfg.path, **kw)
            kd, parts = objective(s_out, t_out, batch)
            exp_ratio = search.expected_ratio(self.cost_model, self.metric)
            loss = kd + budget(exp_ratio, count - 1)
            w_opt.zero_grad(set_to_none=True)
            a_opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(weights, cfg.max_grad_norm)
            watch.observe(count, epoch, "loss", loss)
            watch.observe(count, epoch, "gradient norm", grad_norm)
            if hg.grad is not None and fg.grad is not None:
                search.update_importance(taylor_importance(hg), taylor_importance(fg), head_active=hg.detach() > 0,
                                         ffn_active=fg.detach() > 0)
            w_opt.step()
            w_sched.step()
            a_opt.step()
            return {"tau": tau, "loss": loss.detach(), "ratio": exp_ratio.detach(), **parts}

        def end_search():  # the last step is checkpointed at the stage boundary
            search.eval()
            derived = search.derive(self.cost_model, self.ratio, self.metric)
            structure = Structure.from_indices(derived.heads, derived.ffn, student)
            self.state["search_summary"] = {
                "expected_ratio": float(search.expected_ratio(self.cost_model, self.metric).detach()),
                "derived_ratio": derived.ratio(self.cost_model, self.metric), "heads": derived.head_counts,
                "ffn": derived.ffn_counts}
            self._enter_distill(structure, student)

        self._loop(SEARCH, step, watch, lambda: self._save(module, optimizers, schedulers)).run_steps(
            self.data.batches, self.state, cfg.search_steps, after_stage=end_search)

    def _loop(self, stage: str, step, watch, save, on_log=None) -> TrainLoop:
        cfg = self.cfg
        return TrainLoop(stage=stage, step=step, watch=watch, log=self.log, log_steps=cfg.log_steps,
                         save_steps=cfg.save_steps, save=save, hooks=self.hooks, progress_bar=cfg.progress,
                         on_log=on_log)

    def _enter_distill(self, structure, student) -> None:
        """Prune physically, measure, and checkpoint the boundary (a resumed run never redoes the search)."""
        pruned = prune(student, structure).to(self.device)
        self.state.update(stage=DISTILL, step=0, structure=structure.to_dict(),
                          pruned_dev=self.data.evaluate(pruned))
        self.log.log("pruned", step=self._global_step(), heads=pruned.num_heads, ffn=pruned.intermediate_sizes,
                     dev=self.state["pruned_dev"])
        self._pruned = pruned
        self._save(torch.nn.ModuleDict({"student": pruned}), {}, {})

    # --- distill, evaluate, export --------------------------------------------------------------------
    def _pruned_from_state(self):
        pruned = getattr(self, "_pruned", None)
        if pruned is None:
            pruned = prune(copy.deepcopy(self.teacher), Structure.from_dict(self.state["structure"]))
            pruned = pruned.to(self.device)
        return pruned.requires_grad_(True).train()

    def _distill_and_finish(self, resumed) -> dict:
        cfg = self.cfg
        pruned = self._pruned_from_state()
        if resumed is not None and not resumed.optimizers:
            # checkpointed at the boundary, before the objective existed: restore before building it
            self.checkpoints.restore(resumed, torch.nn.ModuleDict({"student": pruned}), {}, {})
            resumed = None
        if self.state["step"] < cfg.distill_steps:
            objective = self._objective(pruned)
            module = torch.nn.ModuleDict({"student": pruned, "objective": objective})
            watch = FiniteWatch(self.ctx, self.dirs.checkpoints, self.log, stage=DISTILL)
            kd = KDStage(pruned, self.teacher, objective, cfg.distill_steps, lr=cfg.lr, weight_decay=cfg.weight_decay,
                         warmup_ratio=cfg.warmup_ratio, max_grad_norm=cfg.max_grad_norm, device=self.device,
                         watch=watch, path=cfg.path)
            if resumed is not None:
                self.checkpoints.restore(resumed, module, kd.optimizers, kd.schedulers)

            def on_log(step, values):
                self.state["history"].append({"stage": DISTILL, "step": step, **values})

            self._loop(DISTILL, kd.step, watch, lambda: self._save(module, kd.optimizers, kd.schedulers),
                       on_log).run_steps(self.data.batches, self.state, cfg.distill_steps, offset=cfg.search_steps)
        student_dev = self.data.evaluate(pruned)
        torch.manual_seed(cfg.seed)
        untrained_dev = self.data.evaluate(MaskedGPT2(pruned.config).to(self.device))
        return self._finish(pruned, student_dev, untrained_dev)

    def _finish(self, pruned, student_dev, untrained_dev) -> dict:
        cfg, metric, cost_model = self.cfg, self.metric, self.cost_model
        full_cost = cost_model.full_cost(metric)
        kept_cost = cost_model.structure_cost(pruned.num_heads, pruned.intermediate_sizes, metric)
        report = {
            "task": "lm", "target": cfg.target, "metric": metric,
            "teacher_dev": self.state["teacher_dev"], "pruned_dev": self.state["pruned_dev"],
            "student_dev": student_dev, "untrained_same_shape_dev": untrained_dev,
            metric: {"full": full_cost, "kept": kept_cost, "ratio": kept_cost / full_cost},
            "num_parameters": {"teacher": sum(p.numel() for p in self.teacher.parameters()),
                               "student": sum(p.numel() for p in pruned.parameters())},
            "structure": {"heads": pruned.num_heads, "ffn": pruned.intermediate_sizes,
                          "kept": self.state["structure"]},
            "search": self.state["search_summary"], "history": self.state["history"], "kd": cfg.kd,
            "train_blocks": self.data.num_train, "eval_blocks": self.data.num_dev,
            "resumed": self.mode == "resume",
            "wall_time_s": round(self.checkpoints.wall_time_s(), 1),
            "threads": self.threads,
            "config": config_dict(cfg),
        }
        self.log.log("done", step=self._global_step(), student_dev=student_dev)
        self.log.close()
        publish(self.dirs, pruned, self.tokenizer, {"report.json": report}, cfg.keep_checkpoints)
        return dict(report, output=self.dirs.output)


def run_compress_lm(cfg: LMCompressConfig) -> dict:
    """The whole LM pipeline (see the module docstring); returns the report (also written as report.json)."""
    metric, ratio = validate(cfg)
    threads = apply_threads(cfg.threads)
    dirs = run_dirs(cfg.output)
    if os.path.abspath(cfg.teacher) == dirs.output:
        raise UserError("--output must differ from --teacher")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    teacher, tokenizer, _ = load_teacher_for(cfg.teacher, "lm")
    teacher = teacher.to(device).eval().requires_grad_(False)
    data = task_data(cfg, tokenizer, "lm", device)  # bad data is refused before the output folders are touched
    cost_model = CostModel(teacher.hidden_size, teacher.head_dim, teacher.num_heads, teacher.intermediate_sizes,
                           seq_len=cfg.block_size, metric=metric)
    if ratio < cost_model.min_ratio(metric):
        raise UserError(f"--target {cfg.target}: below the minimum achievable {metric} ratio "
                        f"{cost_model.min_ratio(metric):.4f}")
    mode = prepare(dirs, cfg.overwrite, cfg.resume)
    if mode == "done":
        return finished_result(dirs, "report.json", config_dict(cfg), announce=cfg.progress)
    return _LMCompression(cfg, metric, ratio, teacher, tokenizer, data, cost_model, dirs, device, mode, threads).run()

# ------------------------------------------------------------------------------ compress --task lm
# how to say what a GLUE-only flag of ``compress`` is for a causal LM, where there is a counterpart
_LM_HINTS = {"max_seq_len": " (use --block-size)", "seq_len": " (the cost length of --task lm is --block-size)"}


def is_lm_run(flags: dict, config_file: Optional[str] = None) -> bool:
    """Whether a ``compress`` run is the LM one: its ``task`` (a flag or keyword given, else the ``--config``
    file's) is "lm". One rule for ``ddk-fast compress`` and ``ddk_fast.compress``."""
    task = flags.get("task")
    if task is None and config_file:
        task = load_yaml(config_file).get("task")
    return is_lm_task(task or "")


def _kd_options_into_kd(values: dict) -> dict:
    """``values`` with ``compress``'s KD options (``temperature``, ``hidden_loss``, ``fusion``...) moved into
    its ``kd`` mapping: an LM run takes them as objective options, as ``--kd`` gives them."""
    values = dict(values)
    kd = {key: values.pop(key) for key in list(values) if key in KD_DEFAULTS and key != "path"}
    kd.update(parse_kd(values.pop("kd", None)))
    if kd:
        values["kd"] = kd
    return values


def compress_lm(flags: dict, config_file: Optional[str] = None) -> dict:
    """``ddk-fast compress --task lm ...``: build the config from the flags given and run.

    ``flags``: ``compress``'s options that were given (None: not given). Its KD flags (``--temperature``,
    ``--hidden-loss``, ``--fusion``...) go into the objective options, like ``--kd``; the options an LM run
    has no use for are refused rather than ignored."""
    flags = {k: v for k, v in flags.items() if v is not None}
    if flags.get("search") not in (None, "gumbel"):
        raise UserError(f"--search {flags['search']!r}: --task lm supports the gumbel search only")
    flags.pop("search", None)
    lm_fields = {f.name for f in dataclasses.fields(LMCompressConfig)}
    for fld in dataclasses.fields(CompressConfig):
        if fld.name in flags and fld.name not in lm_fields and fld.name not in KD_DEFAULTS:
            raise UserError(f"{flag_of(fld)}{_LM_HINTS.get(fld.name, '')} is not an option of --task lm")
    return run_compress_lm(build_lm_config(_kd_options_into_kd(flags), config_file))


__all__ = ["LMCompressConfig", "build_lm_config", "compress_lm", "is_lm_run", "run_compress_lm"]
