"""One training engine for every backbone, method and task.

AdamW with linear warm-up and decay, gradient accumulation and clipping,
autocast (bf16/fp16) on CUDA, evaluation after every epoch, the best adapter
kept by the task's primary validation metric, early stopping, and a checkpoint
every ``checkpoint_every`` steps and at each epoch end from which ``--resume``
continues bit for bit on CPU.

Determinism: the data order of epoch ``e`` is a permutation seeded by
``(seed, e)``, so a resumed run skips exactly the batches it had done, and the
RNG states (dropout) come back from the checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, cast

import torch
from torch import nn

from adapt import distributed, fast_path, feature_cache
from adapt.adapter_io import load_adapter, save_adapter
from adapt.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint, set_rng_state
from adapt.config import TrainConfig
from adapt.errors import AdaptError, ConfigError, Interrupted, PluginError
from adapt.interfaces import BuiltModel, Example
from adapt.params import trainable_state

ADAPTER_DIR = "adapter"
METRICS_FILE = "metrics.jsonl"
#: On a GPU the loss is read back (a host sync) only every this many optimiser steps.
SYNC_EVERY = 25


def sync_interval(device: torch.device) -> int:
    """Optimiser steps between reading the loss back: every step on a CPU (free there),
    every ``SYNC_EVERY`` on a GPU so the host can queue work ahead of it. A non-finite
    loss is caught at the next read, before any checkpoint could hold it."""
    return 1 if device.type == "cpu" else SYNC_EVERY


@dataclass
class _Loop:
    """The moving parts of one training run, shared by the steps of Trainer._fit."""

    runner: nn.Module
    optimiser: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    #: epoch, batch, step, best_metric, best_epoch, bad_epochs, seconds: what a checkpoint saves
    state: dict[str, Any]
    checkpoint_path: Path
    losses: list[float] = field(default_factory=list)
    pending: list[torch.Tensor] = field(default_factory=list)


class TrainingError(AdaptError):
    """Training cannot go on (a NaN loss, ...); the last good checkpoint is kept."""


@contextlib.contextmanager
def stop_on_interrupt(enabled: bool) -> Iterator[Callable[[], bool]]:
    """While training, the first Ctrl-C (SIGINT) asks the loop to stop after the step it
    is in and save a checkpoint; a second one interrupts at once. Yields "was it asked?".
    Off under DDP (the processes would stop at different steps) and off the main thread."""
    asked = [False]
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if asked[0]:
            raise KeyboardInterrupt
        asked[0] = True
        print(
            "\ninterrupt: saving a checkpoint after this step (press Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: asked[0]
    finally:
        signal.signal(signal.SIGINT, previous)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device = {name!r}, but no CUDA device is available here", hint="use train.device: auto or cpu"
        )
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. ``auto``: bf16 on a CUDA device that has it."""
    if name == "fp32" or (name == "auto" and device.type != "cuda"):
        return None
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision = 'fp16' needs a CUDA device", hint="use bf16 or fp32 on the CPU")
    return torch.bfloat16 if name == "bf16" else torch.float16


#: Length grouping sorts windows of this many batches (as transformers' LengthGroupedSampler).
GROUP_WINDOW = 50


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, dist: distributed.Dist, lengths: Sequence[int] | None = None
) -> list[list[int]]:
    """This process's batches for one epoch: a seeded permutation, sharded across processes.
    With ``lengths``, examples of similar length share a batch (less padding): each window
    of :data:`GROUP_WINDOW` batches of the permutation is sorted by length, then the
    batches are shuffled, so the data order stays random from batch to batch."""
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    if dist.active:
        order += order[: (-len(order)) % dist.world]  # every process gets the same number of examples
        order = order[dist.rank :: dist.world]
    if lengths is None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    window = GROUP_WINDOW * batch_size
    grouped = [
        i
        for start in range(0, len(order), window)
        for i in sorted(order[start : start + window], key=lambda i: -lengths[i])
    ]
    batches = [grouped[i : i + batch_size] for i in range(0, len(grouped), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def example_length(example: Example) -> int:
    """A cheap stand-in for an example's token count: the characters of its text fields
    (text, prompt and completion, chat messages) or its number of words."""
    if "tokens" in example:
        return len(example["tokens"])
    if "messages" in example:
        return sum(len(str(m.get("content", ""))) for m in example["messages"])
    return sum(len(str(example.get(key) or "")) for key in ("text", "prompt", "completion"))


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def freeze_frozen_norms(model: nn.Module) -> None:
    """Put normalisation layers whose parameters are all frozen in eval mode, so
    their running statistics stay those of the checkpoint (the adapter does not
    save them)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if not any(p.requires_grad for p in module.parameters(recurse=False)):
                module.eval()


@dataclass
class Evaluation:
    metrics: dict[str, float]
    logits: list[torch.Tensor] = field(default_factory=list)
    predictions: list[Any] = field(default_factory=list)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    examples: Sequence[Example],
    collate: Callable,
    task: Any,
    label_names: Sequence[str],
    *,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype | None = None,
    keep_logits: bool = False,
) -> Evaluation:
    """The task's metrics (and the mean loss) of ``model`` on ``examples``."""
    model.eval()
    predictions, references, logits_kept = [], [], []
    total_loss, batches = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = to_device(collate(examples[start : start + batch_size]), device)
        labels = batch.pop("labels")
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(**batch)
        logits = logits.float()
        total_loss += float(task.loss(logits, labels))
        batches += 1
        pred, ref = task.decode(logits.cpu(), labels.cpu())
        predictions += pred
        references += ref
        if keep_logits:
            logits_kept.append(logits.cpu())
    metrics = task.metrics(predictions, references, label_names) if references else {}
    if batches:
        metrics["loss"] = total_loss / batches
    return Evaluation(metrics, logits_kept, predictions)


def nothing_trainable(built: BuiltModel) -> ConfigError:
    """The error for a method that left no parameter to train."""
    headless = not built.head and not built.new_parameters
    return ConfigError(
        "the method left no parameter trainable"
        + (" (this model has no new task head: a language model's output layer is pretrained)" if headless else ""),
        hint="with method freeze, set method.options.last_blocks to train the last N blocks, or use lora / adapters"
        if headless
        else "check method.options",
    )


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    best_epoch: int
    best_metric: float | None
    stopped_early: bool
    steps: int
    seconds: float
    fast_path: dict[str, Any] = field(default_factory=dict)
    #: Where and in what precision it trained (``cuda:0``, ``bf16``; ``fp32`` without autocast).
    device: str = "cpu"
    precision: str = "fp32"


class TrainingExamples:
    """The training split as the loop reads it: each example passed through the task's
    ``augment(example, rng)`` when it has one (object-detection: flip and crop), with a
    generator seeded by (seed, epoch, index), so a resumed or multi-worker run sees the
    same augmented examples. Validation and test never go through it."""

    def __init__(
        self, examples: Sequence[Example], augment: Callable[..., Example] | None, seed: int, epoch: int
    ) -> None:
        self.examples, self.augment, self.seed, self.epoch = examples, augment, seed, epoch

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        if self.augment is None:
            return self.examples[index]
        import numpy as np

        example = self.examples[index]
        changed = self.augment(example, np.random.default_rng([self.seed, self.epoch, index]))
        return example if changed is None else changed  # None: the task does not augment


class Trainer:
    """Trains ``built`` (already adapted by its method) on ``splits`` into ``run_dir``."""

    def __init__(
        self,
        *,
        built: BuiltModel,
        method: Any,
        task: Any,
        collate: Callable,
        train: Sequence[Example],
        val: Sequence[Example],
        label_names: Sequence[str],
        config: TrainConfig,
        run_dir: Path,
        on_epoch: Callable[[int, dict], None] | None = None,
        dist: distributed.Dist | None = None,
        sequence_length: int | None = None,
    ) -> None:
        self.built, self.method, self.task, self.collate = built, method, task, collate
        self.train_set, self.val_set, self.label_names = list(train), list(val), list(label_names)
        self.config, self.run_dir, self.on_epoch = config, run_dir, on_epoch
        self.sequence_length = sequence_length  # the rows train.packing fills (the backbone's sequence length)
        self.sharded_bytes = 0  # train.strategy: fsdp under torchrun: the frozen weights sharded
        self.lengths = [example_length(e) for e in self.train_set] if config.group_by_length else None
        self.dist = dist or distributed.Dist()
        self.device = resolve_device(config.device)
        if self.device.type == "cuda" and self.dist.active:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.dtype = resolve_precision(config.precision, self.device)
        self.log: list[dict[str, Any]] = []
        #: a linear probe's head (feature_cache.probe_head) and, when used, its cached inputs
        self.probe: tuple[str, nn.Module] | None = None
        self.cache: feature_cache.FeatureCache | None = None

    # -- set-up ---------------------------------------------------------------

    def _optimiser(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        fused = self.device.type == "cuda"
        return torch.optim.AdamW(
            self._param_groups(params),
            lr=self.config.lr,
            weight_decay=self.config.weight_decay,
            fused=fused or None,
            foreach=None if fused else True,
        )

    def _param_groups(self, params: list[nn.Parameter]) -> list[dict[str, Any]]:
        """One AdamW group per learning rate: train.lr, and the multiples the method asks
        for (``Method.learning_rates``: LoRA+'s B)."""
        named = dict(self.built.model.named_parameters())
        asked = getattr(self.method, "learning_rates", None)  # a plugin may predate the member
        multiples = asked(self.built) if asked is not None else {}
        unknown = sorted(set(multiples) - set(named))
        if unknown:
            raise PluginError(
                f"method '{self.method.name}' sets learning rates for parameters the model lacks: "
                f"{', '.join(unknown[:3])}",
                hint="Method.learning_rates must name trainable parameters by their full names",
            )
        of_param = {id(named[n]): m for n, m in multiples.items()}
        groups: dict[float, list[nn.Parameter]] = {}
        for param in params:
            groups.setdefault(of_param.get(id(param), 1.0), []).append(param)
        for multiple in sorted(m for m in groups if m != 1.0):
            self._say(f"train: {len(groups[multiple])} tensors learn at {multiple:g} x train.lr")
        return [{"params": group, "lr": self.config.lr * multiple} for multiple, group in groups.items()]

    def _scheduler(self, optimiser: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
        warm = max(1, int(total * self.config.warmup)) if self.config.warmup > 0 else 0

        def factor(step: int) -> float:
            if warm and step < warm:
                return (step + 1) / warm
            return max(0.0, (total - step) / max(1, total - warm))

        return torch.optim.lr_scheduler.LambdaLR(optimiser, factor)

    # -- the loop -------------------------------------------------------------

    def fit(self, resume: bool = False) -> TrainResult:
        model = self.built.model.to(self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise nothing_trainable(self.built)
        fast = fast_path.prepare(model, self.config.fast, self.device, self.built.switches)
        try:
            fast.undo.append(self._gradient_checkpointing())
            self.probe = feature_cache.probe_head(model, self.built.head)
            if self.probe is not None:
                self._cache_features(model)
            with stop_on_interrupt(not self.dist.active) as self._stop_asked:
                return self._fit(model, params, fast, resume)
        finally:
            fast.restore()  # the merge and the export see the model as the backbone built it

    def _gradient_checkpointing(self) -> Callable[[], None]:
        """``train.gradient_checkpointing`` through the backbone's switch; how to undo it."""
        if not self.config.gradient_checkpointing:
            return lambda: None
        switch = self.built.switches.get("gradient_checkpointing")
        undo, why = switch() if switch is not None else (None, "the backbone offers no gradient checkpointing")
        if undo is None:
            raise ConfigError(
                f"train.gradient_checkpointing: {why}",
                hint="set train.gradient_checkpointing: false (a smaller train.batch_size also saves memory)",
            )
        self._say("train: gradient checkpointing on (activations recomputed in the backward pass)")
        return undo

    def _collate_training(self, examples: list[Example]) -> Any:
        """A training batch, packed where ``train.packing`` asks (the task's ``pack``)."""
        batch = self.collate(examples)
        if not self.config.packing:
            return batch
        packed = self.task.pack(batch, self.sequence_length or 0)
        if packed is None:
            raise ConfigError(
                f"train.packing: task {self.built.task!r} cannot pack its batches",
                hint="set train.packing: false (packing joins the token sequences of a decoder LM's examples)",
            )
        return packed

    def _cache_features(self, model: nn.Module) -> None:
        """A probe's head inputs for the training and validation splits, computed once
        (``train.cache_features``); from here on the loop trains and validates the head on them."""
        assert self.probe is not None
        name = self.probe[0]
        why = (
            "train.cache_features is false"
            if not self.config.cache_features
            else "training is distributed"
            if self.dist.active
            else "augmentation changes the inputs every epoch (train.augment: false allows caching)"
            if self._augment() is not None
            else ""
        )
        built = why or feature_cache.build(
            model,
            name,
            {"train": self.train_set, "val": self.val_set},
            self.collate,
            batch_size=self.config.eval_batch,
            device=self.device,
            dtype=self.dtype,
        )
        if isinstance(built, str):
            self._say(f"train: linear probe ({name} trains, the rest in eval mode); features not cached: {built}")
            return
        self.cache = built
        self.train_set, self.val_set, self.collate = built.train, built.val, feature_cache.collate
        self._say(
            f"train: linear probe: the frozen part ran once ({len(built.train)} training + {len(built.val)} "
            f"validation examples, {built.seconds:.1f} s); {name} trains on its outputs"
        )

    def _fit(self, model: nn.Module, params: list[nn.Parameter], fast: fast_path.FastPath, resume: bool) -> TrainResult:
        cfg = self.config
        self._say(f"train: fast path: {fast.describe()}")
        loop = self._loop(model, params, fast)
        self._restore(model, loop, resume)
        started = time.perf_counter() - loop.state["seconds"]
        stopped_early = False
        for epoch in range(loop.state["epoch"], cfg.epochs):
            losses, seen, tick = self._train_epoch(model, params, loop, epoch, fast, started)
            if self._end_epoch(model, loop, epoch, losses, seen, tick, started):
                stopped_early = True
                break
        distributed.barrier(self.dist)
        load_adapter(self.method, self.built, self.run_dir / ADAPTER_DIR)  # the best epoch's weights
        state = loop.state
        names: dict[torch.dtype | None, str] = {torch.bfloat16: "bf16", torch.float16: "fp16"}
        precision = names.get(self.dtype, "fp32")
        return TrainResult(
            self.log,
            state["best_epoch"],
            state["best_metric"],
            stopped_early,
            state["step"],
            time.perf_counter() - started,
            {**fast.as_dict(), **self._cache_entry()},
            str(self.device),
            precision,
        )

    def _cache_entry(self) -> dict[str, Any]:
        """The report's ``training.fast_path.feature_cache`` for a probe (absent otherwise)."""
        if self.probe is None:
            return {}
        return {"feature_cache": self.cache.describe() if self.cache else {"head": self.probe[0], "used": False}}

    def _loop(self, model: nn.Module, params: list[nn.Parameter], fast: fast_path.FastPath) -> _Loop:
        """The runner (DDP-wrapped, compiled), optimiser, schedule, grad scaler and a fresh state."""
        cfg, dist = self.config, self.dist
        runner: nn.Module = model
        if self.cache is not None:
            runner = self.cache.runner
        elif dist.active and cfg.strategy == "fsdp":
            self.sharded_bytes = distributed.shard(model, self.built.blocks, params, self.device.type)
            self._say(
                f"train: fsdp: {self.sharded_bytes / 2**20:,.0f} MiB of frozen weights sharded over {dist.world} "
                "processes"
            )
        elif dist.active:
            from torch.nn.parallel import DistributedDataParallel

            runner = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        runner = fast_path.compiled(runner, fast)
        optimiser = self._optimiser(params)
        per_epoch = len(epoch_batches(len(self.train_set), cfg.batch_size, cfg.seed, 0, dist, self.lengths))
        steps_per_epoch = math.ceil(per_epoch / cfg.grad_accum)
        scheduler = self._scheduler(optimiser, steps_per_epoch * cfg.epochs)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        state = {
            "epoch": 0,
            "batch": 0,
            "step": 0,
            "best_metric": None,
            "best_epoch": 0,
            "bad_epochs": 0,
            "seconds": 0.0,
        }
        return _Loop(runner, optimiser, scheduler, scaler, state, self.run_dir / CHECKPOINT)

    def _restore(self, model: nn.Module, loop: _Loop, resume: bool) -> None:
        """Continue from the last checkpoint (resume), or start a fresh metrics file."""
        if resume and loop.checkpoint_path.exists():
            saved = load_checkpoint(loop.checkpoint_path)
            from adapt.params import load_parameters

            load_parameters(model, {k: v for k, v in saved["trainable"].items()})
            loop.optimiser.load_state_dict(saved["optimiser"])
            loop.scheduler.load_state_dict(saved["scheduler"])
            loop.scaler.load_state_dict(saved["scaler"])
            loop.state.update(saved["state"])
            self.log = list(saved["log"])
            set_rng_state(saved["rng"])
            self._rewrite_log()
            self._say(f"train: resuming at epoch {loop.state['epoch'] + 1}, step {loop.state['step']}")
        elif self.dist.main:
            (self.run_dir / METRICS_FILE).unlink(missing_ok=True)

    def _checkpoint(self, model: nn.Module, loop: _Loop) -> None:
        if self.dist.main:
            trainable = {n: t.cpu() for n, t in trainable_state(model).items()}
            save_checkpoint(
                loop.checkpoint_path,
                {
                    "trainable": trainable,
                    "optimiser": loop.optimiser.state_dict(),
                    "scheduler": loop.scheduler.state_dict(),
                    "scaler": loop.scaler.state_dict(),
                    "state": dict(loop.state),
                    "log": self.log,
                },
            )
        distributed.barrier(self.dist)

    def _read_losses(self, loop: _Loop, epoch: int, batch_index: int) -> None:
        """Bring the pending losses to the host (one sync) and stop at a non-finite one."""
        if not loop.pending:
            return
        values = torch.stack(loop.pending).tolist()
        first = batch_index - len(values) + 1
        loop.pending.clear()
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                raise TrainingError(
                    f"the training loss became {value} at epoch {epoch + 1}, batch {first + offset + 1}; training "
                    "stopped",
                    hint=f"lower train.lr (now {self.config.lr}) or use train.precision: fp32; the last good "
                    f"checkpoint is {loop.checkpoint_path} (`adapt train {self.run_dir}` continues from it)",
                )
        loop.losses.extend(values)

    def _train_epoch(
        self,
        model: nn.Module,
        params: list[nn.Parameter],
        loop: _Loop,
        epoch: int,
        fast: fast_path.FastPath,
        started: float,
    ) -> tuple[list[float], int, float]:
        """One pass over the training batches from where the state says; returns the
        losses, the examples seen and when the pass began."""
        cfg, dist, state = self.config, self.dist, loop.state
        batches = epoch_batches(len(self.train_set), cfg.batch_size, cfg.seed, epoch, dist, self.lengths)
        loop.runner.train()
        freeze_frozen_norms(model)
        if self.probe is not None:
            feature_cache.set_probe_modes(model, self.probe[1])
        loop.losses, loop.pending = [], []  # pending: losses still on the device
        seen, tick = 0, time.perf_counter()
        sync_every = sync_interval(self.device)
        progress = self._progress(len(batches), epoch, initial=state["batch"])
        for i, batch in self._loader(batches, state["batch"], fast, epoch):
            batch = fast_path.channels_last_batch(to_device(batch, self.device), fast)
            labels = batch.pop("labels")
            fast_path.step_begins(fast)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                loss = self.task.loss(loop.runner(**batch).float(), labels)
            loop.scaler.scale(loss / cfg.grad_accum).backward()
            loop.pending.append(loss.detach())
            seen += len(batches[i])
            if progress is not None:
                progress.update(1)
            last = i == len(batches) - 1
            if (i + 1) % cfg.grad_accum == 0 or last:
                self._step(params, loop, i)
                due = bool(cfg.checkpoint_every) and state["step"] % cfg.checkpoint_every == 0 and not last
                stop = self._stop_asked() and not last  # Ctrl-C: checkpoint here, then stop
                if due or stop or state["step"] % sync_every == 0:
                    self._read_losses(loop, epoch, i)
                    if progress is not None and loop.losses:
                        progress.set_postfix(
                            loss=f"{loop.losses[-1]:.4f}",
                            samples_s=f"{seen * dist.world / max(time.perf_counter() - tick, 1e-9):.1f}",
                        )
                if due or stop:
                    self._mid_epoch_checkpoint(model, loop, epoch, due, started)
                if stop:
                    self._interrupted(state, loop.checkpoint_path)
        self._read_losses(loop, epoch, len(batches) - 1)
        if progress is not None:
            progress.close()
        return loop.losses, seen, tick

    def _step(self, params: list[nn.Parameter], loop: _Loop, batch_index: int) -> None:
        """One optimiser step (clipping, the scaler, the schedule) after batch ``batch_index``."""
        cfg = self.config
        if self.sharded_bytes:  # fsdp: the trainable parameters are whole on each process, DDP is not there
            distributed.average_gradients(self.dist, params)
        if cfg.max_grad_norm > 0:
            loop.scaler.unscale_(loop.optimiser)
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        loop.scaler.step(loop.optimiser)
        loop.scaler.update()
        loop.optimiser.zero_grad(set_to_none=True)
        loop.scheduler.step()
        loop.state["step"] += 1
        loop.state["batch"] = batch_index + 1

    def _mid_epoch_checkpoint(self, model: nn.Module, loop: _Loop, epoch: int, due: bool, started: float) -> None:
        """A periodic (``due``) or Ctrl-C checkpoint inside an epoch; a periodic one is logged."""
        row = {
            "kind": "step",
            "epoch": epoch + 1,
            "step": loop.state["step"],
            "loss": loop.losses[-1],
            "lr": loop.scheduler.get_last_lr()[0],
        }
        if due:
            self.log.append(row)
        loop.state["seconds"] = time.perf_counter() - started
        self._checkpoint(model, loop)
        if due:
            self._append(row)  # after the checkpoint: the file never runs ahead of it

    def _end_epoch(
        self, model: nn.Module, loop: _Loop, epoch: int, losses: list[float], seen: int, tick: float, started: float
    ) -> bool:
        """Validate, keep the best adapter, log, checkpoint; True when training should stop early."""
        cfg, dist, state = self.config, self.dist, loop.state
        train_loss = distributed.mean(dist, sum(losses) / max(len(losses), 1)) if losses else float("nan")
        throughput = seen * dist.world / max(time.perf_counter() - tick, 1e-9)
        val = (
            evaluate(
                self.cache.runner if self.cache else model,
                self.val_set,
                self.collate,
                self.task,
                self.label_names,
                batch_size=cfg.eval_batch,
                device=self.device,
                dtype=self.dtype,
            )
            if self.val_set
            else Evaluation({})
        )
        metrics = {
            "train_loss": train_loss,
            **{f"val_{k}": v for k, v in val.metrics.items()},
            "samples_per_s": throughput,
        }
        primary = self.task.primary_metric
        score = val.metrics.get(primary)
        better = (lambda a, b: a < b) if self.task.lower_is_better else (lambda a, b: a > b)
        improved = score is None or state["best_metric"] is None or better(score, state["best_metric"])
        state.update(epoch=epoch + 1, batch=0)
        if improved:
            state.update(best_metric=score, best_epoch=epoch + 1, bad_epochs=0)
            if dist.main:
                save_adapter(self.method, self.built, self.run_dir / ADAPTER_DIR)
        else:
            state["bad_epochs"] += 1
        row = {"kind": "epoch", "epoch": epoch + 1, "step": state["step"], **metrics, "best": improved}
        self.log.append(row)
        shown = {k: v for k, v in metrics.items() if k not in ("val_examples", "samples_per_s")}
        self._say(
            f"epoch {epoch + 1}/{cfg.epochs}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in shown.items())
            + f", {throughput:.1f} samples/s"
            + (" (best)" if improved else "")
        )
        if self.on_epoch and dist.main:
            self.on_epoch(epoch + 1, metrics)
        state["seconds"] = time.perf_counter() - started
        self._checkpoint(model, loop)
        self._append(row)
        if self._stop_asked() and epoch + 1 < cfg.epochs:
            self._interrupted(state, loop.checkpoint_path)
        if cfg.patience and state["bad_epochs"] >= cfg.patience:
            self._say(f"train: no better {primary} for {cfg.patience} epochs; stopping early")
            return True
        return False

    def _loader(self, batches: list[list[int]], start: int, fast: fast_path.FastPath, epoch: int) -> Any:
        """``(index, collated batch)`` for the batches from ``start`` on; with
        ``train.workers`` the collating (tokenising, decoding images) runs in worker
        processes. Batches land in pinned memory when the fast path asks for it."""
        remaining = batches[start:]
        examples = TrainingExamples(self.train_set, self._augment(), self.config.seed, epoch)
        if self.config.workers == 0:
            return (
                (start + k, fast_path.pinned(self._collate_training([examples[j] for j in indices]), fast))
                for k, indices in enumerate(remaining)
            )
        from torch.utils.data import DataLoader, Dataset

        loader: DataLoader[Example] = DataLoader(
            cast("Dataset[Example]", examples),
            batch_sampler=remaining,
            collate_fn=self._collate_training,
            num_workers=self.config.workers,
            pin_memory=fast.pin_memory,
        )
        return enumerate(loader, start)

    def _augment(self) -> Callable[..., Example] | None:
        """The task's ``augment`` as ``train.augment`` asks: off, every kind, or the kinds listed."""
        augment, wanted = self.task.augment, self.config.augment
        if wanted is False or not self.task.augments:
            return None
        if wanted is True:
            return augment
        return lambda example, rng: augment(example, rng, kinds=tuple(wanted))

    def _interrupted(self, state: dict[str, Any], checkpoint_path: Path) -> None:
        raise Interrupted(
            f"training interrupted at epoch {state['epoch'] + 1}, step {state['step']}; the checkpoint "
            f"{checkpoint_path} holds everything up to that step",
            hint=f"continue with `adapt train {self.run_dir}`"
            + (
                f" (the best adapter so far is in {self.run_dir / ADAPTER_DIR})"
                if (self.run_dir / ADAPTER_DIR).exists()
                else ""
            ),
        )

    # -- output ---------------------------------------------------------------

    def _progress(self, total: int, epoch: int, initial: int) -> Any:
        """A progress bar on an interactive terminal, nothing otherwise."""
        if not self.dist.main or not sys.stderr.isatty():
            return None
        from tqdm import tqdm

        return tqdm(
            total=total,
            initial=initial,
            desc=f"epoch {epoch + 1}/{self.config.epochs}",
            unit="batch",
            leave=False,
            dynamic_ncols=True,
        )

    def _append(self, row: dict[str, Any]) -> None:
        if self.dist.main:
            with open(self.run_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")

    def _rewrite_log(self) -> None:
        """After a resume the metrics file holds exactly what the checkpoint knew."""
        if self.dist.main:
            from adapt.rundir import atomic_write_text

            atomic_write_text(self.run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in self.log))

    def _say(self, text: str) -> None:
        if self.dist.main:
            import click

            click.echo(text)
