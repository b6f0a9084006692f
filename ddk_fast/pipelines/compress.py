"""`ddk-fast compress`: the DDK pipeline end to end.

(1) load the fine-tuned teacher into the masked engine (frozen) and a student copy;
(2) search: the student runs with gates sampled from the width search; loss = recursive adaptive
    hidden KD + prediction KD + task loss + budget loss; weights and architecture parameters have
    their own optimizers; the Gumbel temperature is annealed; unit importance is an EMA of Taylor
    scores |g * dL/dg| of the sampled gates;
(3) derive the structure (guaranteed within the budget) and prune physically;
(4) distill the pruned student again (same objective without the budget), evaluate on dev each
    epoch, keep the best;
(5) export (``ddk_fast.export.save_pruned``) with report.json, structure.png, curves.png, the JSONL
    log and TensorBoard events.
``--fixed-structure uniform`` replaces (2)-(3) by the same budget met with uniform widths; its
distillation runs search_epochs + distill_epochs epochs so both see the same number of steps.

The export is the best dev score among the one-shot student, the pruned student and each distillation
epoch (``_offer_export``).

Resume: the checkpoint records the stage; a run killed during the search resumes the search, one
killed during distillation rebuilds the pruned student from the recorded structure.
"""
from __future__ import annotations

import copy
import math
import os
import shutil
import sys
import time

import torch
from safetensors import SafetensorError

from ddk_fast._io import atomic_write_json, read_json
from ddk_fast.data.custom import model_task_type, task_files
from ddk_fast.data.glue import subsample_indices
from ddk_fast.distill.objectives import DEFAULTS, KDObjective
from ddk_fast.errors import UserError
from ddk_fast.export import save_pruned, load_pruned
from ddk_fast.model import MaskedTransformer, refusal, write_back, Structure, prune
from ddk_fast.model.masked_transformer import DDK_MODEL_TYPE
from ddk_fast.search import CostModel, LatencyFit, TemperatureSchedule, build_budget, build_search
from ddk_fast.search.importance import taylor_importance
from ddk_fast.runs import ddp
from ddk_fast.runs import teacher_cache
from ddk_fast.pipelines.baseline import keep_top, uniform_counts
from ddk_fast.runs.batching import eval_loader, train_loader
from ddk_fast.runs.checkpoint import weights_digest
from ddk_fast.runs.checkpointer import Checkpointer
from ddk_fast.pipelines.configs import CompressConfig
from ddk_fast.runs.config import config_dict, parse_kd
from ddk_fast.pipelines.deploy import add_deployment, check_onnx_task, check_pruning_run
from ddk_fast.runs.evaluation import encode_split, evaluate, load_split, resolve_task, score_of, to_device
from ddk_fast.runs.export_slot import ExportSlot
from ddk_fast.runs.hf import (check_head_kind, check_label_count, has_classifier_head, head_kind_of, load_tokenizer,
                               read_config)
from ddk_fast.runs.host_memory import keep_freed_memory
from ddk_fast.runs.latency_table import measure_latency_fit
from ddk_fast.runs.logging import RunLogger
from ddk_fast.runs.loop import FiniteWatch, RunHooks, TrainLoop
from ddk_fast.pipelines.oneshot import one_shot
from ddk_fast.runs.optim import adamw, linear_schedule
from ddk_fast.pipelines.report import Report, build_report, write_plots
from ddk_fast.runs.run_state import DISTILL, SEARCH, RunState
from ddk_fast.runs.rundir import copy_logs, finalize, finished_result, prepare, run_dirs, stage_dir
from ddk_fast.runs.stages import DistillModule, SearchModule, initial_importance, teacher_outputs, weight_parameters
from ddk_fast.pipelines.structure_file import read_structure_file
from ddk_fast.runs.threads import apply_threads
from ddk_fast.runs.validate import check_seq_len

FIXED_KINDS = ("uniform", "oneshot")


# ----------------------------------------------------------------------------------------- validation
def validate(cfg: CompressConfig) -> tuple[str, float]:
    metric, ratio = check_pruning_run(cfg)
    if cfg.fixed_structure is None and cfg.search_epochs < 1:
        raise UserError("--search-epochs 0: the search needs at least one epoch (or use --fixed-structure uniform)")
    one_shot_pass = cfg.fixed_structure == "oneshot" or (cfg.fixed_structure is None and cfg.init == "oneshot")
    if cfg.importance_iterations > 1 and not one_shot_pass:
        raise UserError(f"--importance-iterations {cfg.importance_iterations}: this run has no one-shot step "
                        "(it needs --init oneshot or --fixed-structure oneshot)")
    if cfg.search_lr is not None and cfg.fixed_structure is not None:
        raise UserError(f"--search-lr {cfg.search_lr}: --fixed-structure runs no search (use --lr)")
    if not (0.0 <= cfg.budget_warmup < 1.0):
        raise UserError(f"--budget-warmup {cfg.budget_warmup!r}: expected a fraction of the search in [0, 1)")
    if cfg.fixed_structure not in (None, *FIXED_KINDS) and not os.path.isfile(cfg.fixed_structure):
        raise UserError(f"--fixed-structure {cfg.fixed_structure!r}: expected uniform, oneshot or a structure "
                        "JSON file (no such file)")
    extra = objective_options(cfg) and parse_kd(cfg.kd)  # a malformed --kd is refused here, before any work
    if extra.get("hidden_weight") and cfg.progress:
        print(f"note: --kd hidden_weight={extra['hidden_weight']} adds a catalog hidden-state term beside DDK's "
              f"own (weight --hidden-weight {cfg.hidden_weight}; --kd mapping= maps the catalog terms, not DDK's "
              f"layer-to-layer one); use --hidden-weight to re-weight DDK's term",
              file=sys.stderr, flush=True)
    return metric, ratio


def objective_options(cfg: CompressConfig) -> dict:
    """Options of the run's objective over the ``ddk`` preset of ``KDObjective``: DDK's hidden term, prediction
    KD and task loss at the run's settings, plus the catalog terms ``--kd`` / ``--attention-weight`` add. The
    DDK hidden term is the same with or without them."""
    extra = parse_kd(cfg.kd)
    unknown = sorted(set(extra) - set(DEFAULTS))
    if unknown:
        raise UserError(f"--kd {cfg.kd!r}: unknown option(s) {', '.join(unknown)}; expected some of "
                        f"{', '.join(sorted(DEFAULTS))}")
    opts = {"ddk_hidden_weight": cfg.hidden_weight, "hidden_loss": cfg.hidden_loss, "fusion": cfg.fusion,
            "layer_weighting": cfg.layer_weighting, "pred_weight": cfg.pred_weight, "task_weight": cfg.task_weight,
            "temperature": cfg.temperature, "attention_weight": cfg.attention_weight, "path": cfg.path}
    opts.update(extra)
    return opts


def has_catalog_terms(cfg: CompressConfig) -> bool:
    """Whether the run adds catalog terms to the DDK objective (``--kd`` or an attention weight)."""
    return bool(parse_kd(cfg.kd)) or bool(cfg.attention_weight)


# the DDK objective's state before it became a term of KDObjective, and where that term keeps it now
LEGACY_OBJECTIVE_STATE = ("objective.layer_weights.", "objective.fusion.")


def checkpoint_tensors(tensors: dict, meta: dict, objective, cfg: CompressConfig, work: str) -> dict:
    """A checkpoint's module tensors, ready for ``load_state_dict`` of a module holding ``objective``.

    Checkpoints record the objective's term names (``meta["objective"]``). Ones without that record were
    written when the DDK objective was a module of its own: alone, it computed what the ``ddk_hidden`` term
    computes, so its state (adaptive weights, learned fusion gate) is loaded through a key map,
    ``objective.X`` -> ``objective.terms.<i>.X``; with catalog terms, the hidden term was the catalog's
    (no embedding state, this step's weights), so those runs are refused rather than switched mid-run."""
    names = [term.name for term in objective.terms]
    recorded = meta.get("objective")
    if recorded is not None:
        if list(recorded) != names:
            raise UserError(f"--resume: the checkpoint in {work!r} was trained with the terms {recorded}, this run "
                            f"builds {names}")
        return tensors
    if has_catalog_terms(cfg):
        raise UserError(f"--resume: the checkpoint in {work!r} comes from an earlier version whose --kd objective "
                        "matched hidden states differently; start the run again with --overwrite")
    index = names.index("ddk_hidden") if "ddk_hidden" in names else None
    out = {}
    for key, value in tensors.items():
        if key.startswith(LEGACY_OBJECTIVE_STATE):
            if index is None:  # state of a hidden term of weight 0: never read
                continue
            key = f"objective.terms.{index}.{key[len('objective.'):]}"
        out[key] = value
    return out


def load_teacher(path: str, spec):
    """The fine-tuned teacher as a MaskedTransformer (+ its tokenizer); one-line errors otherwise."""
    if not os.path.isdir(path):
        raise UserError(f"--teacher {path!r} is not a folder")
    config = read_config(path)
    model_type = config.get("model_type", "")
    if model_type == DDK_MODEL_TYPE:
        raise UserError(f"--teacher {path!r} is already a pruned export; give the fine-tuned teacher")
    refused = refusal(model_type)
    if refused is not None:
        raise UserError(f"--teacher {path!r}: architecture {model_type!r} is not supported{refused}")
    if not has_classifier_head(config):
        raise UserError(f"--teacher {path!r} has no {head_kind_of(spec)} head (architectures="
                        f"{config.get('architectures')}); fine-tune it first with `ddk-fast finetune`")
    check_label_count(path, config, spec)
    check_head_kind(path, config, spec)
    if not any(f.endswith(".safetensors") for f in os.listdir(path)):
        raise UserError(f"--teacher {path!r} has no .safetensors weights; only safetensors checkpoints are read")
    task_type = model_task_type(spec)
    try:
        teacher = MaskedTransformer.from_pretrained(path, num_labels=spec.num_labels, task_type=task_type)
    except (ValueError, KeyError, OSError, TypeError, SafetensorError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"--teacher {path!r}: cannot read the model ({first})") from None
    if teacher.pruned_from is not None:
        raise UserError(f"--teacher {path!r} is already a pruned export; give the fine-tuned teacher")
    if getattr(spec, "is_custom", False):  # the export's config names the labels (regression: the column)
        teacher.config.id2label = dict(enumerate(spec.label_names))
    return teacher, load_tokenizer(path, spec)


def cost_model_for(model, seq_len: int, metric: str, cfg=None, info=None):
    """The budget's cost model; for ``latency`` the teacher is timed at uniform widths on this machine
    (at --latency-batch-size x --latency-seq-len, --latency-threads: the shape the report measures)."""
    latency = None
    if metric == "latency":
        if cfg is None:
            raise ValueError("a latency cost model needs the run config (shape and threads of the measurement)")
        latency = saved_latency_fit(cfg)
        if latency is None:
            latency = measure_latency_fit(model, cfg.latency_batch_size, cfg.latency_seq_len, cfg.latency_threads,
                                          info=info, runtime=cfg.latency_runtime)
    return CostModel(model.hidden_size, model.head_dim, model.num_heads, model.intermediate_sizes,
                     seq_len=seq_len, metric=metric, latency=latency)


LATENCY_FIT_FILE = "latency_fit.json"


def saved_latency_fit(cfg):
    """The latency fit an unfinished run measured (``--resume`` keeps its budget), else None."""
    if not getattr(cfg, "resume", False):
        return None
    path = os.path.join(run_dirs(cfg.output).work, LATENCY_FIT_FILE)
    try:
        data = read_json(path)
        data["points"] = tuple(data.get("points", ()))
        return LatencyFit(**data)
    except (OSError, ValueError, TypeError):
        return None


def save_latency_fit(cost_model, dirs) -> None:
    if cost_model.latency is not None and os.path.isdir(dirs.work):
        atomic_write_json(os.path.join(dirs.work, LATENCY_FIT_FILE), cost_model.latency.to_dict())


def _console(cfg):
    """Messages before the run's logger exists (stderr, like the logger's console), or None when quiet."""
    if not cfg.progress:
        return None
    return lambda message: print(message, file=sys.stderr, flush=True)


def check_budget(cost_model, ratio: float, metric: str, target_text: str) -> None:
    min_ratio = cost_model.min_ratio(metric)
    if ratio < min_ratio:
        raise UserError(f"--target {target_text}: below the minimum achievable {metric} ratio {min_ratio:.4f} "
                        f"(every head and FFN channel removed); expected a ratio in [{min_ratio:.4f}, 1]")


# ------------------------------------------------------------------------------------------------ run
def open_teacher(cfg, metric: str, ratio: float):
    """What a pruning run (``prune``, ``compress``) opens and checks before it touches any output: the
    task, the teacher and its tokenizer, the sequence lengths against the teacher, the cost model and
    the budget, the run folders. Returns (teacher_path, spec, teacher, tokenizer, cost_model, dirs)."""
    teacher_path = os.path.abspath(cfg.teacher)
    spec = resolve_task(cfg.task, cfg, teacher_path)
    check_onnx_task(cfg, spec)
    teacher, tokenizer = load_teacher(teacher_path, spec)
    for value, flag in ((cfg.seq_len, "--seq-len"), (cfg.max_seq_len, "--max-seq-len"),
                        (cfg.latency_seq_len, "--latency-seq-len")):
        check_seq_len(value, teacher.config, flag)
    cost_model = cost_model_for(teacher, cfg.seq_len, metric, cfg, info=_console(cfg))
    check_budget(cost_model, ratio, metric, cfg.target)
    dirs = run_dirs(cfg.output)
    if os.path.abspath(dirs.output) == teacher_path:
        raise UserError("--output must differ from --teacher")
    return teacher_path, spec, teacher, tokenizer, cost_model, dirs


def run_compress(cfg: CompressConfig) -> dict:
    metric, ratio = validate(cfg)
    threads = apply_threads(cfg.threads)
    teacher_path, spec, teacher, tokenizer, cost_model, dirs = open_teacher(cfg, metric, ratio)
    ctx = ddp.setup(cfg.device)
    try:
        data = _load_data(cfg, spec, tokenizer)  # bad data is refused before the output folders are touched
        file_structure = None
        if cfg.fixed_structure not in (None, *FIXED_KINDS):  # so is a bad structure file
            file_structure = structure_from_file(cfg, teacher, data[0], cost_model, metric, ratio)
        mode = prepare(dirs, cfg.overwrite, cfg.resume) if ctx.is_main else None
        mode = ddp.broadcast_object(ctx, mode)
        if mode == "done":
            return finished_result(dirs, "report.json", config_dict(cfg), announce=ctx.is_main)
        if metric == "latency":  # every rank budgets with the main rank's measurement; --resume reuses it
            cost_model = ddp.broadcast_object(ctx, cost_model)
            if ctx.is_main:
                save_latency_fit(cost_model, dirs)
        run = _Compression(cfg, spec, metric, ratio, teacher, tokenizer, teacher_path, cost_model, dirs, ctx,
                           mode, data)
        run.file_structure, run.threads = file_structure, threads
        with keep_freed_memory():  # exact: fewer page faults per step (ddk_fast.runs.host_memory)
            return run.run()
    finally:
        ddp.teardown(ctx)


def calibration_batches(train_ds, cfg, device) -> list[dict]:
    """``cfg.calibration_examples`` seeded train examples (all when fewer) as batches on ``device``."""
    n = len(train_ds)
    keep = subsample_indices(n, min(cfg.calibration_examples, n), cfg.seed) or range(n)
    return [to_device(b, device) for b in eval_loader(train_ds.subset(keep), cfg.batch_size)]


def structure_from_file(cfg, teacher, train_ds, cost_model, metric: str, ratio: float):
    """The ``--fixed-structure FILE.json`` structure, refused when it does not fit ``--target``."""
    structure = read_structure_file(cfg.fixed_structure, teacher, lambda: calibration_batches(train_ds, cfg, "cpu"),
                                    cfg.path)
    kept = cost_model.structure_cost(structure.num_heads, structure.intermediate_sizes, metric)
    kept_ratio = kept / cost_model.full_cost(metric)
    if kept_ratio > ratio * (1 + 1e-9):
        raise UserError(f"--fixed-structure {cfg.fixed_structure!r} keeps {metric} ratio {kept_ratio:.4f}, above "
                        f"--target {cfg.target}; raise --target to at least {kept_ratio:.4f}")
    return structure


def _load_data(cfg, spec, tokenizer):
    train_ex = load_split(spec, "train", cfg.data_dir, cfg.max_train_examples, cfg.seed)
    dev_ex = load_split(spec, "validation", cfg.data_dir, cfg.max_eval_examples, 0)
    return encode_split(train_ex, tokenizer, cfg.max_seq_len), encode_split(dev_ex, tokenizer, cfg.max_seq_len)


class _Compression:
    """One compression run; what a checkpoint must restore besides tensors lives in ``self.state`` (a RunState)."""

    def __init__(self, cfg, spec, metric, ratio, teacher, tokenizer, teacher_path, cost_model, dirs, ctx, mode,
                 data):
        self.cfg, self.spec, self.metric, self.ratio = cfg, spec, metric, ratio
        self.tokenizer, self.teacher_path, self.cost_model, self.dirs, self.ctx = (
            tokenizer, teacher_path, cost_model, dirs, ctx)
        self.mode = mode
        self.train_ds, self.dev_ds = data
        self.device = ctx.device
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.log = RunLogger(dirs.logs, enabled=ctx.is_main, console=cfg.progress)
        self.checkpoints = Checkpointer(dirs, "compress", cfg, self.log, ctx)
        self.export_slot = ExportSlot(dirs.best)  # best/ changes only after the checkpoint that records it
        self.hooks = RunHooks.of(cfg)
        self.state = RunState(stage=SEARCH if cfg.fixed_structure is None else DISTILL)
        self.teacher_cache = None  # ddk_fast.runs.teacher_cache.TeacherCache, built at the first stage
        self._teacher_cache_decided = False  # built (or found off) once: a cache that is off stays off
        self.teacher_cache_summary = {"mode": "off"}
        self._oneshot = None  # (OneShotResult, full-size student holding the tuned weights), fresh runs only
        self.file_structure = None  # the --fixed-structure FILE.json structure, read before any output
        self.threads = None  # what ddk_fast.runs.threads.apply_threads set at the run's start
        self._pruned_cache = None  # (pruned student, module, optimizers, schedulers) built at the stage boundary
        self.final_digest = None  # sha256 of the in-memory student after the last step

    # --- data -----------------------------------------------------------------------------------------
    def _data(self):
        cfg = self.cfg
        self.loader = train_loader(self.train_ds, cfg.batch_size, cfg.seed, self.ctx.rank, self.ctx.world_size)
        self.dev_loader = eval_loader(self.dev_ds, cfg.eval_batch_size)
        self.steps_per_epoch = self.loader.batch_sampler.batches_per_epoch()

    def _evaluate(self, model, **gates) -> dict:
        path = self.cfg.path

        def logits(b):
            return model(b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b.get("token_type_ids"),
                         path=path, **gates).logits

        t0 = time.perf_counter()
        try:
            return evaluate(model, logits, self.dev_loader, self.device, self.spec)
        finally:
            self.state.times_s["evaluation"] += time.perf_counter() - t0

    def _timed(self, stage: str, fn):
        """Run ``fn()`` and add its wall time, less the dev evaluations inside it, to ``times_s[stage]``."""
        t0, eval0 = time.perf_counter(), self.state.times_s["evaluation"]
        try:
            return fn()
        finally:
            spent = time.perf_counter() - t0 - (self.state.times_s["evaluation"] - eval0)
            self.state.times_s[stage] += spent

    def _objective(self, student):
        """The ``ddk`` preset of ``KDObjective`` (recursive adaptive hidden KD + prediction KD + task loss) at the
        run's settings, with the catalog terms of ``--kd`` / an attention weight."""
        cfg = self.cfg
        try:
            return KDObjective.from_config(objective_options(cfg), student, self.teacher, model_task_type(self.spec),
                                           preset="ddk").to(self.device)
        except ValueError as exc:
            raise UserError(f"{'--kd ' + repr(cfg.kd) if cfg.kd else 'the KD objective'}: {exc}") from None

    def info(self, msg):
        if self.ctx.is_main:
            self.log.info(msg)

    # --- top level ------------------------------------------------------------------------------------
    def run(self) -> dict:
        try:
            torch.manual_seed(self.cfg.seed)
            self._data()
            resumed = self._resume() if self.mode == "resume" else None
            if resumed is None:
                torch.manual_seed(self.cfg.seed + 1000 * self.ctx.rank)
            self.log.log("start", step=self.state.global_step, mode=self.mode, task=self.spec.name,
                         teacher=self.teacher_path, target=self.cfg.target, train_examples=len(self.train_ds),
                         dev_examples=len(self.dev_ds), steps_per_epoch=self.steps_per_epoch,
                         world_size=self.ctx.world_size, threads=self.threads, config=config_dict(self.cfg))
            self.info(f"compress {self.spec.name} to {self.cfg.target}: {len(self.train_ds)} train / "
                      f"{len(self.dev_ds)} dev examples, {self.steps_per_epoch} steps per epoch, {self.mode} run, "
                      f"work folder {self.dirs.work}")
            if self.state.teacher_dev is None:
                self.state.teacher_dev = self._evaluate(self.teacher)
                self.info("teacher dev: " + _fmt(self.state.teacher_dev))
            if resumed is None and self._wants_one_shot():
                self._timed("oneshot", self._run_one_shot)
            if self.state.stage == SEARCH:
                self._timed("search", lambda: self._search_stage(resumed))
                self._log_teacher_cache(SEARCH)
                resumed = None
            if self.state.stage == DISTILL:
                self._timed("distill", lambda: self._distill_stage(resumed))
                self._log_teacher_cache(DISTILL)
            self._close_teacher_cache()  # before the export: a disk cache lives in the work folder
            times = self.state.times_s
            self.info("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
            return self._finish()
        finally:
            self._close_teacher_cache()
            self.log.close()

    # --- one-shot start ---------------------------------------------------------------------------------
    def _wants_one_shot(self) -> bool:
        cfg = self.cfg
        if cfg.fixed_structure is None:
            return cfg.init == "oneshot" and self.state.stage == SEARCH
        return cfg.fixed_structure == "oneshot" and self.state.structure is None

    def _calibration_batches(self) -> list[dict]:
        return calibration_batches(self.train_ds, self.cfg, self.device)

    def _run_one_shot(self):
        """Fisher importance, mask search, rearrangement and least-squares scales on the teacher; the
        tuned weights are written back into a full-size student so the search can still grow units."""
        cfg = self.cfg
        calib = self._calibration_batches()
        result = one_shot(self.teacher, calib, self.cost_model, self.metric, self.ratio,
                          granularity=cfg.channel_granularity, path=cfg.path, tuning_examples=cfg.tuning_examples,
                          tuning_check_examples=cfg.tuning_check_examples, score_logits=score_of(self.spec),
                          importance_iterations=cfg.importance_iterations)
        if self.ctx.distributed:
            # Every rank continues from rank 0's result: GPU reductions need not agree bitwise across
            # ranks, and ranks with different structures would build differently shaped students.
            result = ddp.broadcast_object(self.ctx, result.to("cpu")).to(self.device)
        dev = self._evaluate(result.student.to(self.device))
        student = write_back(copy.deepcopy(self.teacher), result.student).requires_grad_(True).train()
        self._oneshot = (result, student)
        if cfg.fixed_structure is None:  # a search follows: its student must beat the one-shot one to be exported
            self._offer_export(result.student, dev, "oneshot", epoch=0)
        timings = {k: round(v, 2) for k, v in result.timings.items()}
        self.state.oneshot = {"dev": dev, "calibration_examples": sum(len(b["labels"]) for b in calib),
                              "heads": result.structure.head_counts, "ffn": result.structure.ffn_counts,
                              "ratio": result.structure.ratio(self.cost_model, self.metric), "timings_s": timings,
                              "tuning_kept": None if result.tuning is None else result.tuning.kept}
        self.state.history.append({"stage": "oneshot", "epoch": 0, "step": self.state.global_step, **dev})
        self.log.log("oneshot", step=self.state.global_step, **self.state.oneshot)
        self.info(f"one-shot structure heads {result.structure.head_counts}, FFN {result.structure.ffn_counts} "
                  f"({', '.join(f'{k[:-2]} {v:.1f} s' for k, v in timings.items())}); dev " + _fmt(dev))

    def _oneshot_ranking(self):
        """Fisher scores with the one-shot kept units lifted above every other unit: the search's
        top-k then always contains the one-shot units first (rearrangement may keep a unit whose own
        score is not among the layer's top)."""
        result = self._oneshot[0]
        ranking = []
        for scores, kept in ((result.head_scores, result.structure.heads), (result.ffn_scores, result.structure.ffn)):
            scores = scores.float().clone()
            lift = float(scores.max()) + 1.0
            for l, units in enumerate(kept):
                scores[l, units] += lift
            ranking.append(scores)
        return ranking

    # --- checkpoints ----------------------------------------------------------------------------------
    def _save(self, module, optimizers: dict, schedulers: dict):
        st = self.state
        self.checkpoints.save(st.global_step, st.to_dict(), module, optimizers, schedulers,
                              meta={"stage": st.stage, "epoch": st.epoch, "batch": st.batch,
                                    "objective": [term.name for term in module.objective.terms]})
        if self.ctx.is_main:
            self.export_slot.commit()  # the checkpoint just written names the pending candidate

    def _resume(self):
        """The newest checkpoint (its run state becomes ``self.state``), or None."""
        resumed = self.checkpoints.load()
        if resumed is not None:
            try:
                self.state = RunState.from_dict(resumed.state)
            except (TypeError, ValueError) as exc:
                raise UserError(f"--resume: the checkpoint {resumed.path!r} holds no compress run state "
                                f"({exc})") from None
        recorded = None if resumed is None else self.state.export_candidate
        if self.ctx.is_main:
            # no checkpoint: the run starts again, so a candidate staged before the first one is dropped
            warning = self.export_slot.recover(recorded)
            if warning:
                self.info(warning)
        ddp.barrier(self.ctx)
        return resumed

    def _restore(self, resumed, module, optimizers, schedulers):
        """Load a checkpoint into freshly built objects (the objective's state of older checkpoints mapped)."""
        tensors = checkpoint_tensors(resumed.tensors, resumed.meta, module.objective, self.cfg, self.dirs.work)
        self.checkpoints.restore(resumed, module, optimizers, schedulers, tensors=tensors)

    # --- teacher cache ---------------------------------------------------------------------------------
    def _on_device_with_teacher(self, batch, kwargs):
        """(the host ``batch`` on the device, the teacher's outputs for it: from the cache when there is one)."""
        ids = batch["example_ids"]  # on the host: the cache looks rows up without a device read
        batch = to_device(batch, self.device)
        if self.teacher_cache is None:
            return batch, teacher_outputs(self.teacher, batch, self.cfg.path, kwargs)
        return batch, self.teacher_cache.outputs(self.teacher, batch, ids, self.cfg.path, kwargs)

    def _ensure_teacher_cache(self, kwargs, reads_padded_queries: bool = False):
        """Build the cache at the first stage (the distillation stage reuses it); on --resume, refill it
        by replaying the batches trained on before the checkpoint (see ``TeacherCache.rebuild``)."""
        if self.teacher_cache is not None:
            if self.teacher_cache.covers(kwargs) and not reads_padded_queries:
                return
            self._close_teacher_cache()  # this stage needs outputs the cache does not hold: a new one
            self._teacher_cache_decided = False
        if self._teacher_cache_decided and self.teacher_cache is None:
            return
        self._teacher_cache_decided = True
        self.teacher_cache = teacher_cache.build(
            self.cfg.teacher_cache, self.cfg.teacher_cache_dtype, self.teacher, self.train_ds, self.loader.collate_fn,
            kwargs, self.dirs.work, self.device, self.cfg.path, info=self.info, rank=self.ctx.rank,
            reads_padded_queries=reads_padded_queries, world_size=self.ctx.world_size)
        if self.teacher_cache is not None and self.mode == "resume":
            t0 = time.perf_counter()
            self.teacher_cache.rebuild(self.teacher, self._batches_so_far(), self.cfg.path)
            summary = self.teacher_cache.summary()
            self.info(f"teacher cache rebuilt for the resume: {summary['rebuild_batches']} batch(es) replayed, "
                      f"{summary['cached_examples']} example(s) cached, {time.perf_counter() - t0:.1f} s")

    def _batches_so_far(self):
        """(batch on the device, example ids) of every step before the resumed position, in order."""
        sampler, st = self.loader.batch_sampler, self.state
        plan = []  # (sampler epoch, batches of it)
        if self.cfg.fixed_structure is None:
            done = self.cfg.search_epochs if st.stage == DISTILL else st.epoch
            plan += [(e, None) for e in range(done)] + ([(st.epoch, st.batch)] if st.stage == SEARCH else [])
        if st.stage == DISTILL:
            plan += [(1000 + e, None) for e in range(st.epoch)] + [(1000 + st.epoch, st.batch)]
        for epoch, count in plan:
            sampler.set_epoch(epoch, 0)
            for b, indices in enumerate(list(iter(sampler))):
                if count is not None and b >= count:
                    break
                batch = self.loader.collate_fn([self.loader.dataset[i] for i in indices])
                yield to_device(batch, self.device), indices

    def _close_teacher_cache(self):
        if self.teacher_cache is not None:
            self.teacher_cache_summary = self.teacher_cache.summary()
            self.teacher_cache.close()
            self.teacher_cache = None

    def _log_teacher_cache(self, stage: str):
        if self.teacher_cache is not None:
            summary = self.teacher_cache_summary = self.teacher_cache.summary()
            self.log.log("teacher_cache", step=self.state.global_step, stage=stage, **summary)
            self.info(f"teacher cache after {stage}: {summary['mib']} MiB {summary['mode']} ({summary['dtype']}), "
                      f"{summary['cached_examples']}/{summary['examples']} examples, batches hit "
                      f"{summary['hit_batches']} / missed {summary['miss_batches']} (hit rate {summary['hit_rate']:.1%})")

    # --- stage 2: search ------------------------------------------------------------------------------
    def _build_search(self):
        cfg = self.cfg
        if self._oneshot is not None:
            student = self._oneshot[1]
            heads_imp, ffn_imp = self._oneshot_ranking()
        else:
            student = copy.deepcopy(self.teacher).requires_grad_(True).train()
            heads_imp, ffn_imp = initial_importance(student)
        total = self.steps_per_epoch * cfg.search_epochs
        if cfg.search == "gumbel":
            search = build_search("gumbel", student.num_heads, student.intermediate_sizes,
                                  granularity=cfg.channel_granularity, importance_momentum=cfg.importance_momentum,
                                  tau=cfg.tau_start, init="full", head_importance=heads_imp, ffn_importance=ffn_imp)
            if self._oneshot is not None:
                found = self._oneshot[0].structure
                search.centre_on(found.head_counts, found.ffn_counts)
        elif cfg.search == "progressive":
            # units fade out over the first 3/4 of the search; the last quarter trains the final structure
            search = build_search("progressive", student.num_heads, student.intermediate_sizes,
                                  cost_model=self.cost_model, target=self.ratio,
                                  total_steps=max(1, (3 * total) // 4), granularity=cfg.channel_granularity,
                                  importance_momentum=cfg.importance_momentum, head_importance=heads_imp,
                                  ffn_importance=ffn_imp)
        else:
            search = build_search("hard_concrete", student.num_heads, student.intermediate_sizes,
                                  granularity=cfg.channel_granularity)
        budget = None
        if list(search.arch_parameters()):  # a schedule-driven search (progressive) needs no budget loss
            budget_kw = {"weight": cfg.budget_weight} if cfg.budget_kind == "one_sided" else {}
            budget_kw["warmup_steps"] = int(cfg.budget_warmup * total)
            try:
                budget = build_budget(cfg.budget_kind, self.ratio, self.cost_model, metric=self.metric, **budget_kw)
            except ValueError as exc:
                raise UserError(f"--target {cfg.target}: {exc}") from None
        module = SearchModule(student, search, budget, self._objective(student), self.cost_model, self.metric,
                              cfg.path).to(self.device)
        arch = list(search.arch_parameters())
        lam = list(budget.parameters()) if budget is not None else []
        named_weights = weight_parameters(module, arch + lam)
        w_opt = adamw(named_weights, cfg.lr if cfg.search_lr is None else cfg.search_lr, cfg.weight_decay)
        groups = [{"params": arch, "lr": cfg.arch_lr, "weight_decay": 0.0}] if arch else []
        if lam:
            groups.append({"params": lam, "lr": cfg.lambda_lr, "weight_decay": 0.0})
        a_opt = torch.optim.Adam(groups, betas=(0.9, 0.999)) if groups else None
        w_sched = linear_schedule(w_opt, total, cfg.warmup_ratio)
        tau = TemperatureSchedule(cfg.tau_start, min(cfg.tau_end, cfg.tau_start), max(1, total))
        return module, search, budget, [p for _, p in named_weights], w_opt, a_opt, w_sched, tau

    def _search_stage(self, resumed):
        cfg, ctx = self.cfg, self.ctx
        module, search, budget, weights, w_opt, a_opt, w_sched, tau_schedule = self._build_search()
        optimizers = {"weights": w_opt, **({"arch": a_opt} if a_opt is not None else {})}
        schedulers = {"weights": w_sched}
        if resumed is not None:
            self._restore(resumed, module, optimizers, schedulers)
        train_module = ddp.wrap(module, ctx, find_unused_parameters=True)
        student = module.student
        # a data-driven ranking (one-shot start) is kept: one batch's Taylor scores are noisier than the
        # Fisher of thousands of calibration examples
        update_ranking = search.needs_importance and self.state.oneshot is None
        self.info(f"search: {cfg.search} over heads {student.num_heads} and FFN widths {student.intermediate_sizes}, "
                  f"{cfg.search_epochs} epoch(s), target {self.metric} ratio {self.ratio}")
        watch = FiniteWatch(ctx, self.dirs.checkpoints, self.log)

        kwargs = module.objective.forward_kwargs()
        self._ensure_teacher_cache(kwargs, module.objective.reads_padded_queries)

        def step(batch, gstep, epoch):
            stage_step = gstep - 1 - self.state.stage_start_step
            tau = tau_schedule(stage_step)
            search.on_step(stage_step, tau)
            batch, t_out = self._on_device_with_teacher(batch, kwargs)
            loss, parts, ratio, hg, fg = train_module(batch, t_out, stage_step)
            loss = self.hooks.loss(gstep, loss)
            watch.observe(gstep, epoch, "loss", loss)
            for o in optimizers.values():
                o.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(weights, cfg.max_grad_norm)
            watch.observe(gstep, epoch, "gradient norm", grad_norm)
            if update_ranking and hg.grad is not None and fg.grad is not None:
                hs, fs = taylor_importance(hg), taylor_importance(fg)
                if ctx.distributed:
                    torch.distributed.all_reduce(hs)
                    torch.distributed.all_reduce(fs)
                    hs, fs = hs / ctx.world_size, fs / ctx.world_size
                search.update_importance(hs, fs, head_active=hg.detach() > 0, ffn_active=fg.detach() > 0)
            for o in optimizers.values():
                o.step()
            w_sched.step()
            # device tensors: the loop reads them at log steps only
            out = {"loss": loss.detach(), **parts, "ratio": ratio.detach(), "tau": float(tau),
                   "lr": w_sched.get_last_lr()[0], "grad_norm": grad_norm.detach()}
            for name in ("lambda_1", "lambda_2"):
                if hasattr(budget, name):
                    out[name] = getattr(budget, name).detach().clone()  # a parameter: keep this step's value
            out["heads_kept"] = hg.detach().sum()
            out["ffn_kept"] = fg.detach().sum()
            return out

        def after_epoch(epoch):
            derived = self._derive(search)
            hg, fg = derived.gates(student.num_heads, student.intermediate_sizes, device=self.device)
            metrics = self._evaluate(student, head_gates=hg, ffn_gates=fg)
            exp_ratio = float(search.expected_ratio(self.cost_model, self.metric).detach())
            entry = {"stage": SEARCH, "epoch": epoch + 1, "step": self.state.global_step, **metrics,
                     "derived_ratio": derived.ratio(self.cost_model, self.metric), "expected_ratio": exp_ratio,
                     "heads": derived.head_counts, "ffn": derived.ffn_counts}
            self.state.history.append(entry)
            self.log.log("eval", **entry)
            self.info(f"search epoch {epoch + 1}: derived structure {self.metric} ratio "
                      f"{entry['derived_ratio']:.3f} (expected {exp_ratio:.3f}), dev " + _fmt(metrics))

        self._loop(SEARCH, step, watch, lambda: self._save(module, optimizers, schedulers)).run_epochs(
            self.loader, self.state, cfg.search_epochs, after_epoch)

        derived = self._derive(search)

        structure = Structure.from_indices(derived.heads, derived.ffn, student)
        self.state.search_summary = {
            "kind": cfg.search, "expected_ratio": float(search.expected_ratio(self.cost_model, self.metric).detach()),
            "derived_ratio": derived.ratio(self.cost_model, self.metric)}
        self._enter_distill(structure, student)

    def _loop(self, stage: str, step, watch, save) -> TrainLoop:
        cfg = self.cfg
        return TrainLoop(stage=stage, step=step, watch=watch, log=self.log, log_steps=cfg.log_steps,
                         save_steps=cfg.save_steps, save=save, hooks=self.hooks,
                         progress_bar=self.ctx.is_main and cfg.progress)

    def _derive(self, search):
        was = search.training
        search.eval()
        try:
            return search.derive(self.cost_model, self.ratio, self.metric)
        finally:
            search.train(was)

    # --- stage 3: prune -------------------------------------------------------------------------------
    def _uniform_structure(self):
        heads_n, ffn_n = uniform_counts(self.cost_model, self.ratio, self.metric, self.cfg.channel_granularity)
        heads_imp, ffn_imp = initial_importance(self.teacher)
        return Structure.from_indices(keep_top(heads_imp, heads_n, self.teacher.num_heads),
                                      keep_top(ffn_imp, ffn_n, self.teacher.intermediate_sizes), self.teacher)

    def _fixed_structure(self):
        """(structure, full-size source of the weights or None for the teacher's) of --fixed-structure."""
        kind = self.cfg.fixed_structure
        if kind == "uniform":
            return self._uniform_structure(), None
        if kind == "oneshot":
            result, student = self._oneshot
            return result.to_structure(self.teacher), student
        return self.file_structure, None

    def _enter_distill(self, structure, student):
        """Prune, record the structure, checkpoint at the stage boundary (resume never redoes the search)."""
        self.state.enter_distill(structure.to_dict())
        pruned = self._pruned_student(structure, student)
        self.state.pruned_dev = self._evaluate(pruned)
        self.info(f"pruned to heads {pruned.num_heads}, FFN {pruned.intermediate_sizes}; before distillation dev "
                  + _fmt(self.state.pruned_dev))
        self.log.log("pruned", step=self.state.global_step, structure=self.state.structure,
                     dev=self.state.pruned_dev)
        # the pruned student is a candidate for the export (the first one unless a one-shot student came
        # before it): distillation must improve on the best so far to replace it
        self._offer_export(pruned, self.state.pruned_dev, "pruned", epoch=0)
        module, optimizers, schedulers, _ = self._build_distill(pruned)
        self._save(module, optimizers, schedulers)
        self._pruned_cache = (pruned, module, optimizers, schedulers)

    def _pruned_student(self, structure, source=None):
        base = source if source is not None else copy.deepcopy(self.teacher)
        pruned = prune(base, structure).to(self.device)
        return pruned.requires_grad_(True).train()

    def _offer_export(self, model, metrics: dict, source: str, epoch: int) -> bool:
        """Keep ``model`` as the run's export (``dirs.best``) when its dev score beats every earlier candidate;
        the first candidate is always kept, so an export exists even when no score is finite. Candidates in
        order: the one-shot student (a search run), the pruned student, each distillation epoch. Why the
        one-shot student: on small dev sets (CoLA) it can score above what the search and distillation
        make of the budget, and a user asked for the best model the run saw, not the last."""
        score = metrics[self.spec.main_metric]
        score = score if math.isfinite(score) else -math.inf
        # the main rank decides for all, with its scores: ranks' dev scores need not agree bitwise on GPUs
        improved = self.state.best_metrics is None or score > self.state.best_score
        improved, score, metrics = ddp.broadcast_object(self.ctx, (improved, score, metrics))
        if improved:
            self.state.best_score, self.state.best_metrics = score, dict(metrics, epoch=epoch)
            self.state.exported_from = source
            self.state.export_candidate = f"{source}:{epoch}:{self.state.global_step}"
            if self.ctx.is_main:
                self.export_slot.stage(lambda folder: save_pruned(model, folder, overwrite=True),
                                       self.state.export_candidate)
        ddp.barrier(self.ctx)
        return improved

    # --- stage 4: distill -----------------------------------------------------------------------------
    def _distill_epochs(self) -> int:
        extra = self.cfg.search_epochs if self.cfg.fixed_structure else 0
        return self.cfg.distill_epochs + extra

    def _build_distill(self, pruned):
        cfg = self.cfg
        module = DistillModule(pruned, self._objective(pruned), cfg.path).to(self.device)
        named = weight_parameters(module, [])
        opt = adamw(named, cfg.lr, cfg.weight_decay)
        sched = linear_schedule(opt, self.steps_per_epoch * max(1, self._distill_epochs()), cfg.warmup_ratio)
        return module, {"weights": opt}, {"weights": sched}, [p for _, p in named]

    def _distill_stage(self, resumed):
        cache = self._pruned_cache
        if cache is None and self.state.structure is None:  # fixed-structure run, fresh start
            self._enter_distill(*self._fixed_structure())
            cache = self._pruned_cache
        if cache is not None:
            pruned, module, optimizers, schedulers = cache
        else:
            pruned = self._pruned_student(Structure.from_dict(self.state.structure))
            module, optimizers, schedulers, _ = self._build_distill(pruned)
            if resumed is not None:
                self._restore(resumed, module, optimizers, schedulers)
        params = [p for p in module.parameters() if p.requires_grad]
        self._distill_loop(pruned, module, optimizers, schedulers, params)
        self.final_digest = weights_digest(pruned)

    def _distill_loop(self, pruned, module, optimizers, schedulers, params):
        cfg, ctx = self.cfg, self.ctx
        opt, sched = optimizers["weights"], schedulers["weights"]
        train_module = ddp.wrap(module, ctx, find_unused_parameters=True)
        epochs = self._distill_epochs()
        self.info(f"distill: {epochs} epoch(s) of the pruned student")
        watch = FiniteWatch(ctx, self.dirs.checkpoints, self.log)

        kwargs = module.objective.forward_kwargs()
        self._ensure_teacher_cache(kwargs, module.objective.reads_padded_queries)

        def step(batch, gstep, epoch):
            batch, t_out = self._on_device_with_teacher(batch, kwargs)
            loss, parts = train_module(batch, t_out)
            loss = self.hooks.loss(gstep, loss)
            watch.observe(gstep, epoch, "loss", loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            watch.observe(gstep, epoch, "gradient norm", grad_norm)
            opt.step()
            sched.step()
            return {"loss": loss.detach(), **parts, "lr": sched.get_last_lr()[0], "grad_norm": grad_norm.detach()}

        def after_epoch(epoch):
            metrics = self._evaluate(pruned)
            improved = self._offer_export(pruned, metrics, DISTILL, epoch=epoch + 1)
            entry = {"stage": DISTILL, "epoch": epoch + 1, "step": self.state.global_step, **metrics, "best": improved}
            self.state.history.append(entry)
            self.log.log("eval", **entry)
            self.info(f"distill epoch {epoch + 1}: dev " + _fmt(metrics) + (" (best)" if improved else ""))

        self._loop(DISTILL, step, watch, lambda: self._save(module, optimizers, schedulers)).run_epochs(
            self.loader, self.state, epochs, after_epoch, epoch_offset=1000)
        ddp.barrier(ctx)

    # --- stage 5: export ------------------------------------------------------------------------------
    def _report_source(self) -> Report:
        cfg, st = self.cfg, self.state
        return Report(cfg=cfg, spec=self.spec, teacher=self.teacher, teacher_path=self.teacher_path,
                      cost_model=self.cost_model, metric=self.metric, ratio=self.ratio, method=method_name(cfg),
                      init=cfg.init if cfg.fixed_structure is None else None, train_ds=self.train_ds,
                      dev_ds=self.dev_ds, world_size=self.ctx.world_size,
                      wall_time_s=self.checkpoints.wall_time_s(), teacher_dev=st.teacher_dev,
                      student_dev=st.best_metrics, pruned_dev=st.pruned_dev, history=st.history, oneshot=st.oneshot,
                      search_summary=st.search_summary, times_s=st.times_s, threads=self.threads,
                      exported_from=st.exported_from)

    def _finish(self) -> dict:
        ctx, cfg = self.ctx, self.cfg
        report = None
        if ctx.is_main:
            self.export_slot.commit()  # every candidate is followed by a checkpoint; this is a no-op then
            student = load_pruned(self.dirs.best)
            report = build_report(self._report_source(), student)
            report["teacher_cache"] = self.teacher_cache_summary
            staged = stage_dir(self.dirs)
            try:
                save_pruned(student, staged, tokenizer=self.tokenizer, overwrite=True, extra_files=task_files(self.spec))
                add_deployment(report, staged, cfg, self.teacher_path, self.spec, self.dev_ds, self.info)
                atomic_write_json(os.path.join(staged, "report.json"), report)
                write_plots(report, staged, log_path=os.path.join(self.dirs.logs, "log.jsonl"))
                self.log.log("done", step=self.state.global_step, student_dev=report["student_dev"])
                self.log.close()
                copy_logs(self.dirs, staged)
            except BaseException:
                shutil.rmtree(staged, ignore_errors=True)
                raise
            finalize(self.dirs, staged, keep_work=cfg.keep_checkpoints)
            main = self.spec.main_metric
            self.info(f"student saved to {self.dirs.output} ({_EXPORTED[self.state.exported_from]}): dev {main}="
                      f"{report['student_dev'][main]:.4f} (teacher {report['teacher_dev'][main]:.4f}), {self.metric} "
                      f"ratio {report[self.metric]['ratio']:.3f}, CPU latency x{report['latency']['speedup']}")
            if report["latency"]["warning"]:
                self.info("warning: " + report["latency"]["warning"])
        report = ddp.broadcast_object(ctx, report)
        # the in-memory student after the last step, on this rank (ranks must agree under DDP)
        return dict(report, output=self.dirs.output, final_weights_sha256=self.final_digest,
                    rank=ctx.rank)


def method_name(cfg: CompressConfig) -> str:
    """The report's name of what the run did: ``ddk-<search>``, or the kind of fixed structure."""
    fixed = cfg.fixed_structure
    if fixed is None:
        return f"ddk-{cfg.search}"
    return fixed if fixed == "uniform" else ("fixed-oneshot" if fixed == "oneshot" else "fixed-file")


# how the closing line names the exported candidate (RunState.exported_from)
_EXPORTED = {"oneshot": "the one-shot student", "pruned": "the pruned student before distillation",
             DISTILL: "the best distillation epoch", None: "the best candidate"}


def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
