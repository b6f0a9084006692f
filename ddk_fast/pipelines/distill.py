"""`ddk-fast distill`: distil a fixed student (TinyBERT-style: fewer layers and/or narrower) with a recipe
of the KD catalog, on a GLUE task or on plain text (``--task lm``, GPT-2 teachers).

The same objective code (``ddk_fast.distill.objectives.KDObjective``) serves the DDK compression, this
command and ``ddk-fast sweep``, so a TinyBERT / MaKD / recursive-fusion comparison differs only in its
options. Runs are step-based (``--steps``): recipes compared at the same budget see the same number
of optimizer steps (a two-stage recipe splits them).

Shared pieces used by the LM compression too: ``load_teacher_for``, ``TaskData`` (batches + dev metric),
``KDStage`` (one stage of distillation), ``perplexity``.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Iterator, Optional

import torch

from ddk_fast.data import DataError, load_text_lm
from ddk_fast.data.custom import model_task_type, task_files
from ddk_fast.distill.objectives import KDObjective
from ddk_fast.distill.tinybert import LAYER_INITS, RECIPES, make_student, recipe_stages
from ddk_fast.errors import UserError
from ddk_fast.model.gpt2 import EXPORT_MODEL_TYPE, MaskedGPT2
from ddk_fast.runs import shared_options as shared
from ddk_fast.runs import teacher_cache
from ddk_fast.runs.batching import eval_loader, train_loader
from ddk_fast.pipelines.compress import load_teacher
from ddk_fast.pipelines.configs import BatchOptions, DataOptions, OptimizerOptions
from ddk_fast.runs.config import build_config, config_dict
from ddk_fast.runs.presets import PRESETS
from ddk_fast.runs.checkpointer import Checkpointer
from ddk_fast.runs.ddp import DistContext, resolve_device
from ddk_fast.runs.evaluation import to_device, resolve_task, encode_split, evaluate, load_split, perplexity
from ddk_fast.runs.hf import load_tokenizer, read_config
from ddk_fast.runs.logging import RunLogger
from ddk_fast.runs.loop import FiniteWatch, RunHooks, TrainLoop, skip_batches
from ddk_fast.runs.optim import adamw, linear_schedule
from ddk_fast.runs.options import POSITIVE, api_only, check_fields, option
from ddk_fast.runs.resumable import publish
from ddk_fast.runs.rundir import finished_result, prepare, run_dirs
from ddk_fast.runs.threads import apply_threads

LM_TASK = "lm"


# ------------------------------------------------------------------------------------------ config
@dataclass
class DistillConfig(OptimizerOptions, BatchOptions, DataOptions):
    """A fixed-student distillation run (see the module docstring). ``train_file`` is plain text for
    ``--task lm`` and a table (``DataOptions``) otherwise."""

    teacher: str = shared.teacher("teacher folder (fine-tuned classifier, or GPT-2 for --task lm)")
    task: str = shared.task(shared.LM_TASK_HELP)
    output: str = shared.output("folder for the student + metrics.json")
    data_dir: Optional[str] = shared.data_dir("folder of GLUE TSVs (with a GLUE --task)")
    eval_file: Optional[str] = option(None, group="lm", help="--task lm: plain-text evaluation file")
    preset: str = shared.preset(PRESETS["distill"])
    recipe: str = option("tinybert", group="distill", choices=tuple(RECIPES),
                         help="tinybert (two stages), joint, makd or ddk (docs/distillation.md)")
    student_layers: int = option(3, group="shape", minimum=POSITIVE, help="student depth")
    layer_init: str = option("uniform", group="shape", choices=LAYER_INITS,
                             help="which teacher layers the student starts from (scratch: none)")
    student_heads: Optional[int] = option(None, group="shape", help="heads per student layer (default: the "
                                                                      "teacher's)")
    student_intermediate: Optional[int] = option(None, group="shape", help="FFN width per student layer "
                                                                             "(default: the teacher's)")
    student_hidden: Optional[int] = option(None, group="shape", help="hidden size (needs --layer-init scratch)")
    steps: int = option(2000, group="train", minimum=POSITIVE, help="optimizer steps in all (split across stages)")
    lr: float = shared.lr(5e-5)
    block_size: int = option(64, group="lm", minimum=POSITIVE, help="--task lm: tokens per block")
    max_train_examples: Optional[int] = shared.max_train_examples()
    max_eval_examples: Optional[int] = shared.max_eval_examples()
    seed: int = shared.seed()
    device: str = shared.device()
    threads: Optional[int] = shared.threads()
    path: str = shared.kernel_path()
    log_steps: int = shared.log_steps(50)
    save_model: bool = api_only(True, why="sweep points: the metrics only, nothing written")
    save_steps: int = shared.save_steps(200)
    overwrite: bool = shared.overwrite()
    resume: bool = shared.resume()
    keep_checkpoints: bool = shared.keep_checkpoints()
    progress: bool = shared.progress()
    stop_after_steps: Optional[int] = shared.stop_after_steps()
    kd: dict = shared.kd(default_factory=dict)
    teacher_cache: str = shared.teacher_cache()  # GLUE tasks and the user's data (ddk_fast.runs.teacher_cache)
    teacher_cache_dtype: str = shared.teacher_cache_dtype()


def build_distill_config(flags: dict, config_file: Optional[str] = None) -> DistillConfig:
    """defaults < preset < YAML file < flags given (None = not given); ``kd`` merges key by key."""
    return build_config(DistillConfig, "distill", flags, config_file)


# --------------------------------------------------------------------------------------- teachers
def is_lm_task(task: str) -> bool:
    return str(task).lower() == LM_TASK


def load_teacher_for(path: str, task: str, options=None):
    """(teacher, tokenizer, task_type): a MaskedTransformer classifier for a GLUE task or the user's data
    (``options``: their ``DataOptions``), a MaskedGPT2 for "lm"."""
    if not path or not os.path.isdir(path):
        raise UserError(f"--teacher {path!r} is not a folder")
    config = read_config(path)
    if is_lm_task(task):
        if config.get("model_type") not in ("gpt2", EXPORT_MODEL_TYPE):
            raise UserError(f"--teacher {path!r}: --task lm needs a GPT-2 checkpoint, got model_type "
                            f"{config.get('model_type')!r}")
        try:
            teacher = MaskedGPT2.from_pretrained(path)
        except (ValueError, KeyError, FileNotFoundError) as exc:
            raise UserError(f"--teacher {path!r}: cannot build the masked GPT-2: {exc}") from None
        return teacher, load_tokenizer(path), "lm"

    spec = resolve_task(task, options, path)
    teacher, tokenizer = load_teacher(path, spec)
    return teacher, tokenizer, model_task_type(spec)


# ------------------------------------------------------------------------------------------- data
@dataclass
class TaskData:
    """Training batches (an endless, seeded iterator) and the dev evaluation of one task."""

    task: str
    task_type: str
    batches: Iterator[dict]
    evaluate: Callable[[torch.nn.Module], dict]
    main_metric: str
    higher_is_better: bool
    num_train: int
    num_dev: int
    train_ds: Any = None  # the EncodedDataset behind ``batches`` (GLUE; None for text blocks): the teacher cache's rows
    collate_fn: Optional[Callable] = None
    spec: Any = None  # the task object (GLUE TaskSpec or the user's CustomTask); None for "lm"


def _endless_glue(loader) -> Iterator[dict]:
    epoch = 0
    while True:
        loader.batch_sampler.set_epoch(epoch, 0)
        yield from loader
        epoch += 1


def _endless_blocks(blocks: torch.Tensor, batch_size: int, seed: int) -> Iterator[dict]:
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(blocks.shape[0], generator=g)
        full = max(1, len(order) // batch_size)  # drop the ragged tail (every batch the same size)
        for i in range(full):
            ids = blocks[order[i * batch_size:(i + 1) * batch_size]]
            yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def task_data(cfg, tokenizer, task_type: str, device) -> TaskData:
    """Batches and evaluation for ``cfg.task`` (GLUE task, or "lm" with train_file / eval_file)."""
    if task_type == "lm":
        for flag, value in (("--train-file", cfg.train_file), ("--eval-file", cfg.eval_file)):
            if not value:
                raise UserError(f"{flag} is required with --task lm")
        try:
            train = load_text_lm(cfg.train_file, tokenizer, cfg.block_size, max_blocks=cfg.max_train_examples)
            dev = load_text_lm(cfg.eval_file, tokenizer, cfg.block_size, max_blocks=cfg.max_eval_examples)
        except DataError as exc:
            raise UserError(str(exc)) from None
        return TaskData(LM_TASK, "lm", _endless_blocks(train, cfg.batch_size, cfg.seed),
                        lambda m: perplexity(m, dev, cfg.eval_batch_size, device, cfg.path), "perplexity", False,
                        int(train.shape[0]), int(dev.shape[0]))

    spec = resolve_task(cfg.task, cfg, cfg.teacher)
    train_ex = load_split(spec, "train", cfg.data_dir, cfg.max_train_examples, cfg.seed)
    dev_ex = load_split(spec, "validation", cfg.data_dir, cfg.max_eval_examples, 0)
    train_ds = encode_split(train_ex, tokenizer, cfg.max_seq_len)
    dev_ds = encode_split(dev_ex, tokenizer, cfg.max_seq_len)
    loader = train_loader(train_ds, cfg.batch_size, cfg.seed)
    dev_loader = eval_loader(dev_ds, cfg.eval_batch_size)

    def run_eval(model):
        def logits(b):
            return model(b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b.get("token_type_ids"),
                         path=cfg.path).logits
        return evaluate(model, logits, dev_loader, device, spec)

    return TaskData(spec.name, task_type, _endless_glue(loader), run_eval, spec.main_metric, True, len(train_ds),
                    len(dev_ds), train_ds, loader.collate_fn, spec)


# ------------------------------------------------------------------------------------------- loop
class KDStage:
    """One stage of distillation: the optimizer and schedule over the student's and the objective's
    parameters, and the ``step`` that :class:`TrainLoop` drives in step mode (``distill`` and the LM
    compression's distillation).

    A resumed run restores ``optimizers`` / ``schedulers`` before the loop starts. ``watch``: the
    FiniteWatch the step feeds (loss and gradient norm, on the device). ``cache``: a ``TeacherCache``
    the teacher outputs are read from (batches must carry ``example_ids``)."""

    def __init__(self, student, teacher, objective, steps: int, *, lr: float, weight_decay: float,
                 warmup_ratio: float, max_grad_norm: float, device, watch, path: str = "auto", cache=None):
        named = [(f"student.{n}", p) for n, p in student.named_parameters() if p.requires_grad]
        named += [(f"objective.{n}", p) for n, p in objective.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.optimizer = adamw(named, lr, weight_decay)
        self.scheduler = linear_schedule(self.optimizer, steps, warmup_ratio)
        self.optimizers, self.schedulers = {"weights": self.optimizer}, {"weights": self.scheduler}
        self.student, self.teacher, self.objective, self.watch, self.cache = student, teacher, objective, watch, cache
        self.max_grad_norm, self.device, self.path = max_grad_norm, device, path
        self.kw = objective.forward_kwargs()
        student.train()
        objective.train()

    def step(self, raw: dict, step: int, epoch) -> dict:
        """One optimizer step on the host batch ``raw``; the loss parts stay on the device."""
        batch = to_device(raw, self.device)
        args = (batch["input_ids"],)
        fwd = dict(attention_mask=batch["attention_mask"], token_type_ids=batch.get("token_type_ids"), path=self.path,
                   **self.kw)
        if self.cache is not None:  # example ids read from the host batch: no device read
            t_out = self.cache.outputs(self.teacher, batch, raw["example_ids"], self.path, self.kw)
        else:
            with torch.no_grad():
                t_out = self.teacher(*args, **fwd)
        s_out = self.student(*args, **fwd)
        loss, parts = self.objective(s_out, t_out, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.watch.observe(step, epoch, "loss", loss)
        self.watch.observe(step, epoch, "gradient norm", grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": loss.detach(), **parts, "lr": self.scheduler.get_last_lr()[0]}


# -------------------------------------------------------------------------------------------- run
def _resolve_device(name: str):
    return resolve_device(name)


def validate(cfg: DistillConfig) -> None:
    for flag, value in (("--teacher", cfg.teacher),) + ((("--output", cfg.output),)
                                                                              if cfg.save_model else ()):
        if not value:
            raise UserError(f"{flag} is required")
    check_fields(cfg)


def run_distill(cfg: DistillConfig) -> dict:
    """Build the student, run the recipe's stages, evaluate; export to ``cfg.output`` with metrics.json
    (``save_model=False``: nothing written, the report is returned).

    With an output the run works in ``OUTPUT.inprogress/`` (log, checkpoints every ``save_steps``) and
    ``--resume`` continues an interrupted run exactly where it stopped."""
    validate(cfg)
    threads = apply_threads(cfg.threads)
    dirs = run_dirs(cfg.output) if cfg.save_model else None
    if dirs is not None and os.path.abspath(cfg.teacher) == dirs.output:
        raise UserError("--output must differ from --teacher")
    device = _resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    teacher, tokenizer, task_type = load_teacher_for(cfg.teacher, cfg.task, cfg)
    teacher = teacher.to(device).eval().requires_grad_(False)
    data = task_data(cfg, tokenizer, task_type, device)  # bad data is refused before the output is touched
    try:
        student = make_student(teacher, cfg.student_layers, cfg.layer_init, num_heads=cfg.student_heads,
                               intermediate_size=cfg.student_intermediate, hidden_size=cfg.student_hidden,
                               seed=cfg.seed).to(device)
        stages = recipe_stages(cfg.recipe, cfg.kd, cfg.steps)
        objectives = [KDObjective.from_config(dict(opts, path=cfg.path), student, teacher, task_type).to(device)
                      for _, opts, _ in stages]
    except ValueError as exc:
        raise UserError(str(exc)) from None
    mode = prepare(dirs, cfg.overwrite, cfg.resume) if dirs is not None else "fresh"
    if mode == "done":
        return finished_result(dirs, "metrics.json", config_dict(cfg), announce=cfg.progress)
    log = RunLogger(dirs.logs if dirs is not None else None, enabled=dirs is not None, console=cfg.progress)
    try:
        return _DistillRun(cfg, dirs, mode, log, teacher, tokenizer, student, stages, objectives, data,
                           device, threads).run()
    finally:
        log.close()


class _DistillRun:
    """The stages of one recipe over a fixed student; ``state`` is what a checkpoint restores besides
    the tensors (student and every stage's objective), the optimizer, the scheduler and the RNG."""

    def __init__(self, cfg, dirs, mode, log, teacher, tokenizer, student, stages, objectives, data, device, threads):
        self.cfg, self.dirs, self.mode, self.log, self.threads = cfg, dirs, mode, log, threads
        self.teacher, self.tokenizer, self.student, self.data, self.device = teacher, tokenizer, student, data, device
        self.stages, self.objectives = stages, objectives
        self.module = torch.nn.ModuleDict({"student": student, "objectives": torch.nn.ModuleList(objectives)})
        self.ctx = DistContext(device=device)
        self.checkpoints = Checkpointer(dirs, "distill", cfg, log, self.ctx) if dirs is not None else None
        self.hooks = RunHooks.of(cfg)
        self.state: dict[str, Any] = {"stage_index": 0, "step": 0, "teacher_dev": None, "history": []}
        self.t_start = time.time()

    def _steps_before(self, index: int) -> int:
        """Optimizer steps of the stages before stage ``index``."""
        return sum(steps for _, _, steps in self.stages[:index])

    def _consumed(self) -> int:
        """Batches drawn so far = optimizer steps over all stages."""
        return self._steps_before(self.state["stage_index"]) + self.state["step"]

    def run(self) -> dict:
        resumed = None
        if self.mode == "resume":
            resumed = self.checkpoints.load()
            if resumed is not None:
                self.state.update(resumed.state)
        self.log.log("start", step=self._consumed(), mode=self.mode, task=self.data.task, threads=self.threads,
                     config=config_dict(self.cfg))
        if self.state["teacher_dev"] is None:
            self.state["teacher_dev"] = self.data.evaluate(self.teacher)
        try:
            self._build_cache()
            if self.cache is None:
                skip_batches(self.data.batches, self._consumed())
            else:  # the batches a resumed run already used refill the cache as they did the first time
                self.cache.rebuild(self.teacher, ((to_device(b, self.device), b["example_ids"])
                                                  for b in islice(self.data.batches, self._consumed())), self.cfg.path)
            for index, ((name, _, steps), objective) in enumerate(zip(self.stages, self.objectives)):
                if index < self.state["stage_index"]:
                    continue
                self._run_stage(index, name, steps, objective, resumed)
                resumed = None
                self.state.update(stage_index=index + 1, step=0)
            if self.cache is not None:
                self.cache_summary = self.cache.summary()
                if self.dirs is not None:
                    self.log.log("teacher_cache", step=self._consumed(), **self.cache_summary)
        finally:
            if self.cache is not None:
                self.cache.close()
            if self.dirs is None and self.cache_folder is not None:
                shutil.rmtree(self.cache_folder, ignore_errors=True)
        return self._finish()

    def _build_cache(self):
        """One cache for every stage: it holds what any stage's objective asks of the teacher."""
        self.cache, self.cache_summary, self.cache_folder = None, {"mode": "off"}, None
        if self.data.train_ds is None:  # text blocks carry no example ids
            return
        kwargs = {}
        for objective in self.objectives:
            kwargs.update(objective.forward_kwargs())
        folder = self.cache_folder = (self.dirs.work if self.dirs is not None
                                      else tempfile.mkdtemp(prefix="ddk_teacher_cache_"))
        info = self.log.info if self.dirs is not None else (lambda msg: None)
        self.cache = teacher_cache.build(self.cfg.teacher_cache, self.cfg.teacher_cache_dtype, self.teacher,
                                         self.data.train_ds, self.data.collate_fn, kwargs, folder, self.device,
                                         self.cfg.path, info=info,
                                         reads_padded_queries=any(o.reads_padded_queries for o in self.objectives))

    def _run_stage(self, index: int, name: str, steps: int, objective, resumed) -> None:
        cfg, checkpoints = self.cfg, self.checkpoints
        watch = FiniteWatch(self.ctx, self.dirs.checkpoints if self.dirs is not None else None, self.log, stage=name)
        kd = KDStage(self.student, self.teacher, objective, steps, lr=cfg.lr, weight_decay=cfg.weight_decay,
                     warmup_ratio=cfg.warmup_ratio, max_grad_norm=cfg.max_grad_norm, device=self.device, watch=watch,
                     path=cfg.path, cache=self.cache)
        if resumed is not None:
            checkpoints.restore(resumed, self.module, kd.optimizers, kd.schedulers)
        save = None if checkpoints is None else (
            lambda: checkpoints.save(self._consumed(), self.state, self.module, kd.optimizers, kd.schedulers))

        def on_log(step, values):
            self.state["history"].append({"stage": name, "step": step, **values})

        TrainLoop(stage=name, step=kd.step, watch=watch, log=self.log, log_steps=cfg.log_steps,
                  save_steps=cfg.save_steps, save=save, hooks=self.hooks, progress_bar=cfg.progress,
                  on_log=on_log).run_steps(self.data.batches, self.state, steps, offset=self._steps_before(index))

    def _finish(self) -> dict:
        cfg, student, data = self.cfg, self.student, self.data
        student_dev = data.evaluate(student)
        wall = round(self.checkpoints.wall_time_s() if self.checkpoints is not None else time.time() - self.t_start, 1)
        report = {
            "task": data.task, "recipe": cfg.recipe, "kd": cfg.kd, "main_metric": data.main_metric,
            "higher_is_better": data.higher_is_better, "teacher_dev": self.state["teacher_dev"],
            "student_dev": student_dev,
            "stages": [{"name": n, "steps": s, "options": o} for n, o, s in self.stages],
            "student": {"layers": student.num_layers, "hidden": student.hidden_size, "heads": student.num_heads,
                        "intermediate": student.intermediate_sizes,
                        "teacher_layers": student.config.extra.get("teacher_layers"),
                        "params": sum(p.numel() for p in student.parameters())},
            "teacher_params": sum(p.numel() for p in self.teacher.parameters()),
            "train_examples": data.num_train, "dev_examples": data.num_dev, "history": self.state["history"],
            "resumed": self.mode == "resume", "wall_time_s": wall, "threads": self.threads,
            "config": config_dict(cfg), "teacher_cache": self.cache_summary,
        }
        if self.dirs is None:
            return dict(report, output=None)
        self.log.log("done", step=self._consumed(), student_dev=student_dev)
        self.log.close()
        publish(self.dirs, student, self.tokenizer, {"metrics.json": report, **task_files(data.spec)},
                cfg.keep_checkpoints)
        return dict(report, output=self.dirs.output)


__all__ = ["DistillConfig", "TaskData", "build_distill_config", "KDStage", "load_teacher_for",
           "perplexity", "run_distill", "task_data"]
