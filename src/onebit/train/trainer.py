"""The one training loop, for every method.

Per step: set the learning rate (a pure function of (epoch, step)), forward under autocast
(bf16 on CUDA, fp32 on CPU), loss = weighted sum of the loss terms, backward, step every
optimizer. Per epoch: set the binarizers' schedule state, train, evaluate (top-1 / top-5;
the test set as ``val_*``, a split held out of the training images as ``heldout_*``), append
metrics.jsonl, write best/last checkpoints (best: on ``eval.select_on``). What a recipe adds
to that are the phase's techniques (:mod:`onebit.train.techniques`, where the hooks and their
order are listed): the loop calls their hooks and names none of them.

No host-device sync inside a step: the loss and correct counts accumulate on the device and
are read once per ``runtime.log_interval`` steps (where a NaN/inf loss is detected). A run is
a sequence of phases (``phases:``; without it, one: the config itself), each with its own
model spec, optimizers, loss terms and techniques, the weights carried over by name. Everything
the run writes goes through :class:`RunDir`.
Under ``torchrun`` the same loop runs in every process with DistributedDataParallel
(:mod:`onebit.train.distributed`); process 0 alone writes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field
from tqdm import tqdm

from onebit.config import (
    Bool,
    Config,
    Int,
    Str,
    config_from_dict,
    register_config_check,
    register_section,
    save_config,
    section,
    with_seed,
)
from onebit.data import Loader, Loaders, build_loaders
from onebit.errors import CheckpointError, ConfigError, OutputError, TrainingError
from onebit.io import folder_lock, remove_stale_temporaries
from onebit.machine import cpu_has_bf16
from onebit.machine import describe as describe_machine
from onebit.models import create_model, model_entry
from onebit.report import is_schedule_value
from onebit.train import distributed
from onebit.train.checkpoint import (
    atomic_write_text,
    check_layer_bits,
    checkpoint_path,
    checkpoint_progress,
    layer_bits,
    load_matching,
    load_model_tensors,
    model_tensors,
    optimizer_state,
    read_checkpoint,
    restore_optimizers,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from onebit.train.losses import Batch, build_loss_terms, total_loss
from onebit.train.optim import build_optimizers, set_trainable
from onebit.train.schedules import apply_quant_schedule, lr_at
from onebit.train.techniques import Technique, phase_techniques


@section
class EvalConfig:
    """How the model is evaluated (and checkpointed): BatchNorm running statistics
    re-estimated first from ``bn_recalibrate`` training batches (0: the stored EMA), with or
    without the training augmentation (docs/training.md, "BatchNorm statistics")."""

    bn_recalibrate: Int = Field(0, ge=0)
    bn_augment: Bool = False
    # best.safetensors: the epoch with the best test top-1, or held-out top-1 (data.val_split)
    select_on: Literal["test", "val"] = "test"


@section
class RuntimeConfig:
    """Where and how the run executes; none of these change the recipe."""

    device: Str = "auto"
    precision: Literal["bf16", "fp32"] = "bf16"
    cpu_precision: Literal["bf16", "fp32"] = "fp32"
    compile: Literal["auto", True, False] = "auto"
    # a distillation teacher without binary layers or attention hooks: auto compiles it when
    # the student is compiled; true on a CPU too (a frozen FP net, ~1.6x faster compiled)
    compile_teacher: Literal["auto", True, False] = "auto"
    seed: Int = Field(0, ge=0, le=2**63 - 1)
    out: Str = "runs/auto"
    log_interval: Int = Field(50, ge=1)
    sync_bn: Bool = False


register_section("eval", EvalConfig, position=70)
register_section("runtime", RuntimeConfig, position=130, per_phase=False)


@register_config_check
def _check_selection(config: Config) -> None:
    if config.eval.select_on == "val" and config.data.val_split is None:
        raise ConfigError(
            "config key eval.select_on: val picks the best epoch on a validation split held "
            "out of the training images; set data.val_split (e.g. 5000) or select_on: test"
        )


def resolve_device(name: str) -> torch.device:
    """``"auto"``: the GPU if there is one, else the CPU; otherwise a torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(
            f"config key runtime.device: {name!r} is not a device onebit trains on; use auto, "
            "cpu, cuda or cuda:N"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config key runtime.device: {name!r} but no CUDA GPU is available")
    if device.type == "cuda" and device.index is None:
        # the GPU torchrun's process was given (torch.cuda.set_device), GPU 0 otherwise
        device = torch.device("cuda", torch.cuda.current_device())
    return device


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Loader, amp_dtype: torch.dtype | None = None
) -> dict[str, float]:
    """Mean cross-entropy and top-1 / top-5 accuracy (percent) of ``model`` on ``loader``
    (summed over the processes of a multi-process run, each evaluating its part)."""
    was_training = model.training
    model.eval()
    sums: torch.Tensor | int = 0  # loss, top-1, top-5 hits: a tensor on the data's device
    count = 0
    for x, y in loader.batches(0):
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == y[:, None]
        sums = sums + torch.stack(
            [
                F.cross_entropy(logits.float(), y, reduction="sum"),
                hits[:, 0].sum().float(),
                hits.any(dim=1).sum().float(),
            ]
        )
        count += y.numel()
    model.train(was_training)
    totals = distributed.reduce_sum(torch.cat([sums, sums.new_tensor([count])]))
    loss, top1, top5, count = totals.tolist()
    return {
        "val_loss": loss / count,
        "val_top1": 100 * top1 / count,
        "val_top5": 100 * top5 / count,
    }


# The folder, beside the run directories, where compiled kernels are kept between runs.
INDUCTOR_CACHE = ".inductor-cache"


class RunDir:
    """A run directory: config.yaml, metrics.jsonl, last.safetensors + last.json,
    best.safetensors, train.log. The only place a run writes files."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.metrics = self.path / "metrics.jsonl"
        self.last = self.path / "last.safetensors"
        self.last_json = self.path / "last.json"
        self.best = self.path / "best.safetensors"
        self.log_file = self.path / "train.log"

    def log(self, message: str) -> None:
        """Print ``message`` and append it, time-stamped, to train.log."""
        print(message, flush=True)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with self.log_file.open("a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        except OSError as err:
            raise OutputError(
                f"cannot write {self.log_file}: {err.strerror or err}; choose another --out"
            ) from None

    def write_config(self, config: Config) -> None:
        save_config(config, self.config)

    def append_metrics(self, record: dict[str, Any]) -> None:
        try:
            with self.metrics.open("a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as err:
            raise OutputError(
                f"cannot write {self.metrics}: {err.strerror or err}; the last checkpoint is "
                "kept: make the file writable and --resume, or train into another --out"
            ) from None

    def keep_metrics_until(self, phase: int, epoch: int) -> None:
        """Drop metric lines written after the checkpoint being resumed (phase, epoch), and
        lines that are not a whole record (what a kill in the middle of an append leaves)."""
        if not self.metrics.exists():
            return
        try:
            text = self.metrics.read_bytes().decode("utf-8", "replace")
        except OSError as err:
            raise CheckpointError(
                f"cannot read {self.metrics}: {err.strerror or err}; make it a readable file "
                "(or move it away) to train in this run directory, or train into another --out"
            ) from None
        kept, dropped = "", 0
        for line in text.splitlines():
            try:
                record = json.loads(line)
                where = (int(record.get("phase", 0)), int(record["epoch"]))
            except (ValueError, TypeError, KeyError, AttributeError):
                dropped += 1
                continue
            if where <= (phase, epoch):
                kept += line + "\n"
        if dropped:
            self.log(f"{self.metrics}: dropped {dropped} line(s) that were not a whole record")
        atomic_write_text(self.metrics, kept)

    def remove_temporaries(self) -> list[Path]:
        """Delete the half-written files a killed run left (see onebit.io); returns them."""
        return remove_stale_temporaries(self.path)

    def hold(self) -> contextlib.AbstractContextManager[None]:
        """Hold the directory for one training process (its ``.lock``): a second
        ``onebit train`` into it, e.g. a --resume while the run still goes, is an
        OutputError instead of two runs writing one directory."""
        return folder_lock(
            self.path,
            f"{self.path} is in use by another training process (pid {{pid}}); wait for it "
            "to end or stop it before --resume, or choose another --out",
        )

    def save_last(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        save_checkpoint(self.last, tensors, {"kind": "last", **state})
        atomic_write_text(self.last_json, json.dumps({"kind": "last", **state}, indent=1))

    def save_best(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        save_checkpoint(self.best, tensors, {"kind": "best", **state})


class NullRunDir(RunDir):
    """A run directory as every process but the first of a multi-process run sees it: the
    same paths (to resume from), but it writes and prints nothing."""

    def log(self, message: str) -> None:
        pass

    def write_config(self, config: Config) -> None:
        pass

    def append_metrics(self, record: dict[str, Any]) -> None:
        pass

    def keep_metrics_until(self, phase: int, epoch: int) -> None:
        pass

    def remove_temporaries(self) -> list[Path]:
        return []  # process 0's to clean: its own writes may be under way

    def hold(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # process 0 holds it

    def save_last(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        pass

    def save_best(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        pass


@dataclass
class Progress:
    """Where a run is: what a checkpoint restores besides tensors and RNG."""

    phase: int = 0
    epoch: int = 0  # epochs completed in the current phase
    step: int = 0  # optimizer steps taken since the start of the run
    best_top1: float = -1.0
    best_epoch: int = 0


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if a == b else f"{path} (saved {a!r}, now {b!r})"


class Trainer:
    """Trains ``config``'s model on its data; files go to ``run_dir`` (see :class:`RunDir`).

    ``loaders`` replaces the config's dataset (benchmarks, tests). After construction
    ``trainer.config`` is the fully resolved config (model options with their defaults,
    num_classes and in_chans from the data), and the first phase is set up (model,
    techniques, optimizers, loss terms), unless ``run_dir`` holds a checkpoint: then
    :meth:`fit` with ``resume=True`` sets up the checkpoint's phase, once, and restores it.
    """

    def __init__(
        self, config: Config, run_dir: RunDir | None = None, loaders: Loaders | None = None
    ):
        self.config = copy.deepcopy(config)
        runtime = self.config.runtime
        self.device = resolve_device(runtime.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(runtime.seed)
        self.loaders = loaders or build_loaders(
            self.config.data, self.device, runtime.seed, shard=distributed.rank_and_world()
        )
        # The config's data, unless `loaders` replaces it for every phase.
        self._loaders_data = None if loaders else self.config.data
        self.config.model = self._model_options(self.config.model, self.loaders)
        # A run is a sequence of phases, each a full config (the base one without `phases:`).
        self.phases = self.config.phase_configs()
        for phase in self.phases:
            phase.model = self._model_options(phase.model, self.loaders)
        # what this run trains in: "bf16" (autocast) or "fp32"
        self.precision = runtime.precision if self.device.type == "cuda" else runtime.cpu_precision
        self.amp_dtype = torch.bfloat16 if self.precision == "bf16" else None
        if self.device.type == "cpu" and self.precision == "bf16" and not cpu_has_bf16():
            warnings.warn(
                "runtime.cpu_precision: bf16 on a CPU without AVX512-BF16 or AMX is emulated "
                "and slower than fp32; set runtime.cpu_precision=fp32",
                stacklevel=2,
            )
        self.run_dir = run_dir
        if run_dir is not None and not distributed.is_main():
            self.run_dir = NullRunDir(run_dir.path)
        self.progress = Progress()
        self.model: nn.Module | None = None
        self.techniques: list[Technique] = []
        # process 0's view in a multi-process run: every process must build (and wrap in
        # DistributedDataParallel) the same, and process 0 writes the checkpoints
        self._holds_checkpoint = run_dir is not None and distributed.agree(run_dir.last.exists())
        if not self._holds_checkpoint:
            self._setup_phase(0, carry="init")

    def _should_compile(self) -> bool:
        """``runtime.compile``; ``auto`` compiles on CUDA only. On the CPU the eager step with
        the fused binarizer kernels (onebit.quant.fused) is faster than the compiled one for
        binary networks (ResNet-20 ReCU 241 vs 203 img/s, 1 thread; FP 350 vs 398), and it
        starts at once instead of after a minute or more of compiling (docs/results.md)."""
        setting = self.config.runtime.compile
        if setting != "auto":
            return setting
        return self.device.type == "cuda"

    def _keep_compile_cache(self) -> None:
        """Compiled kernels go to ``<the run directory's parent>/.inductor-cache``, where the
        next run of the same recipe beside this one finds them and starts without compiling
        again. A ``TORCHINDUCTOR_CACHE_DIR`` already set (by the user, or by an earlier
        compile in this process) is left as it is."""
        if self.run_dir is None or os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
            return
        cache = self.run_dir.path.resolve().parent / INDUCTOR_CACHE
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
        self._say(f"compiled kernels are kept in {cache} for the next run")

    def _forwards(self) -> tuple[nn.Module, nn.Module]:
        """The model as the training step calls it (DistributedDataParallel in a multi-process
        run; compiled if ``_should_compile``) and as evaluation calls it: never through DDP,
        whose forward would wait for processes that hold fewer evaluation batches."""
        compile_it = self._should_compile()
        if compile_it:
            self._keep_compile_cache()
        wrapped = distributed.wrap(self.model, self.device, self.phase_config.runtime.sync_bn)
        train = torch.compile(wrapped) if compile_it else wrapped
        if wrapped is self.model:
            return train, train
        return train, torch.compile(self.model) if compile_it else self.model

    @staticmethod
    def _data_options(loaders: Loaders) -> dict[str, Any]:
        """The model options the data decides: classes, channels, input side length."""
        return {
            "num_classes": loaders.num_classes,
            "in_chans": loaders.input_size[0],
            "input_hw": loaders.input_size[1],  # models with input-size-bound layers
        }

    @property
    def data_options(self) -> dict[str, Any]:
        """The model options the current data decides (a teacher's too)."""
        return self._data_options(self.loaders)

    def _model_options(self, model: dict[str, Any], loaders: Loaders) -> dict[str, Any]:
        """The model section with num_classes / in_chans / input_hw taken from the data when not
        given, and every other option at its default: the name and the builder's full options."""
        model = dict(model)
        options = model_entry(model["name"]).defaults
        for key, value in self._data_options(loaders).items():
            if key in options and model.setdefault(key, value) != value:
                raise ConfigError(
                    f"config key model.{key}: {model[key]}, but the dataset has {value}; "
                    f"set model.{key}: {value}"
                )
        return {"name": model["name"], **options, **model}

    def _build_model(self, spec: dict[str, Any], carry: str | None) -> None:
        """Build the phase's model if its spec differs from the current one. ``carry``:
        "phase" copies the previous model's tensors by name, "init" loads ``init:``, None
        leaves the new model as built (a checkpoint is restored next). Tensors the new model
        has and the source lacks keep their initial values (e.g. a learnable scale only the
        new bits have: 1); the source's other tensors are dropped."""
        previous = self.model
        if previous is None or previous.onebit_spec != {
            "name": spec["name"],
            "options": {k: v for k, v in spec.items() if k != "name"},
        }:
            self.model = create_model(**spec).to(self.device)
        sources = []
        if carry == "phase" and previous is not None and self.model is not previous:
            sources.append(("the previous phase", previous.state_dict()))
        if carry == "init" and self.config.init:
            path = checkpoint_path(with_seed(self.config.init, self.config.runtime.seed))
            sources.append((str(path), read_checkpoint(path, self.device)[0]))
        for source, tensors in sources:
            new, dropped = load_matching(self.model, tensors, source)
            if self.run_dir is not None:
                self.run_dir.log(
                    f"weights from {source}; initialised: {', '.join(new) or 'none'}; "
                    f"dropped: {', '.join(dropped) or 'none'}"
                )

    def _setup_phase(self, index: int, carry: str | None = None) -> None:
        """Make phase ``index`` current: end the previous phase's techniques; build its model
        (``carry``: see :meth:`_build_model`; None when a checkpoint is restored next), make
        its parameters trainable as ``optim.train`` says, start its techniques (they may
        stop parameters training, load a model to learn from, add forward hooks), wrap the
        forward passes, build the optimizers (the techniques' own, and ``optim.name``'s for
        every other trainable parameter) and the loss terms (cross-entropy, then the
        techniques')."""
        self._end_phase()
        cfg = self.phase_config = self.phases[index]
        if self._loaders_data is not None and cfg.data != self._loaders_data:
            shard = distributed.rank_and_world()
            self.loaders = build_loaders(cfg.data, self.device, cfg.runtime.seed, shard=shard)
            self._loaders_data = cfg.data
        if cfg.eval.select_on == "val" and self.loaders.val is None:
            raise ConfigError(
                "config key eval.select_on: val, but the loaders hold no validation split; "
                "set data.val_split"
            )
        self._build_model(cfg.model, carry)
        for p in self.model.parameters():
            p.requires_grad_(True)
        set_trainable(self.model, cfg.optim.train)
        self.techniques = phase_techniques(cfg)
        for technique in self.techniques:
            technique.start(self)
        # wrapped after the techniques started: DistributedDataParallel reduces the gradients
        # of the parameters that require one when it is built
        self.forward, self.eval_forward = self._forwards()
        # the first step of a compiled forward (the model's, or a technique's: a teacher)
        # compiles it: said, timed apart (train_epoch)
        compiled = self.forward is not self.model and self._should_compile()
        self._compile_pending = compiled or any(t.compiles for t in self.techniques)
        # a hook that returns None has nothing of its own: no optimizers, the terms as they are
        own = [opt for t in self.techniques for opt in t.optimizers(self) or ()]
        self.optimizers = build_optimizers(self.model, cfg.optim, own)
        self.loss_terms = build_loss_terms(cfg)
        for technique in self.techniques:
            terms = technique.loss_terms(self, self.loss_terms)
            self.loss_terms = self.loss_terms if terms is None else terms

    def _end_phase(self) -> None:
        """Call the current phase's techniques' ``end`` hooks (they release what they hold)."""
        for technique in self.techniques:
            technique.end(self)
        self.techniques = []

    # ------------------------------------------------------------------ the step and the epoch

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
        ):
            logits = self.forward(x)
            loss = total_loss(self.loss_terms, Batch(x, y, logits))
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for technique in self.techniques:
            technique.before_step(self)
        for opt in self.optimizers:
            opt.step()
        for technique in self.techniques:
            technique.after_step(self)
        return loss, logits

    def _set_lr(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        factor = lr_at(self.phase_config.schedule, epoch, step, steps_per_epoch)
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * factor
        return self.optimizers[0].param_groups[0]["lr"]

    def _check_finite(self, loss: float, epoch: int, step: int) -> None:
        if math.isfinite(loss):
            return
        run = self.run_dir
        kept = (
            f"the last good checkpoint is kept: {run.last} (epoch {self.progress.epoch})"
            if run is not None and run.last.exists()
            else "no checkpoint had been written yet"
        )
        raise TrainingError(
            f"training loss became {loss} in epoch {epoch + 1} by step {step + 1}; stopped, "
            f"{kept}. Lower optim.lr or check the data"
        )

    def train_epoch(self, epoch: int, max_steps: int | None = None) -> dict[str, float]:
        """Train one epoch (or its first ``max_steps`` steps); returns its metrics."""
        self.model.train()
        loader = self.loaders.train
        steps = len(loader) if max_steps is None else min(max_steps, len(loader))
        stats = torch.zeros(2, device=self.device)  # sum of loss * batch, correct predictions
        seen, shown, lr = 0, 0, 0.0
        interval = self.config.runtime.log_interval
        epochs = self.phase_config.schedule.epochs
        bar = tqdm(
            total=steps,
            desc=f"epoch {epoch + 1}/{epochs}",
            disable=None if distributed.is_main() else True,
            leave=False,
        )
        start = time.perf_counter()
        compile_seconds, untimed = 0.0, 0  # the compiling step: its time and images
        for i, (x, y) in enumerate(loader.batches(epoch)):
            if i == steps:
                break
            lr = self._set_lr(epoch, i, len(loader))
            if self._compile_pending:
                self._say("compiling with torch.compile (the first steps are slow)…")
            loss, logits = self._step(x, y)
            if self._compile_pending:
                self._compile_pending = False
                loss.item()  # waits for the device
                compile_seconds = time.perf_counter() - start
                start += compile_seconds
                untimed = y.numel() * distributed.rank_and_world()[1]
                self._say(f"compiled in {compile_seconds:.0f} s")
            stats += torch.stack(
                [loss.detach().float() * y.numel(), (logits.argmax(1) == y).sum().float()]
            )
            seen += y.numel()
            self.progress.step += 1
            if (i + 1) % interval == 0 or i + 1 == steps:
                # the one host sync per log interval; sums over the processes of a DDP run
                totals = distributed.reduce_sum(torch.cat([stats, stats.new_tensor([seen])]))
                loss_sum, correct, total = totals.tolist()
                self._check_finite(loss_sum, epoch, i)
                elapsed = time.perf_counter() - start
                bar.update(i + 1 - shown)
                shown = i + 1
                bar.set_postfix(
                    loss=f"{loss_sum / total:.4f}",
                    acc=f"{100 * correct / total:.2f}",
                    lr=f"{lr:.3g}",
                    img_s=f"{(total - untimed) / max(elapsed, 1e-9):.0f}",
                )
        bar.close()
        seconds = time.perf_counter() - start
        record = {
            "lr": lr,
            "train_loss": loss_sum / total,
            "train_top1": 100 * correct / total,
            "seconds": seconds,  # training time, compiling excluded
            "images_per_s": (total - untimed) / max(seconds, 1e-9),
        }
        if compile_seconds:
            record["compile_seconds"] = compile_seconds
        return record

    def _say(self, message: str) -> None:
        """A progress line: to the run's log, or printed when there is no run directory."""
        if self.run_dir is not None:
            self.run_dir.log(message)
        elif distributed.is_main():
            print(message, flush=True)

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Schedule, train and evaluate one epoch; returns its metrics record."""
        cfg = self.phase_config
        began = time.perf_counter()
        # a phase that trains part of a longer schedule (schedule.offset / total_epochs)
        # continues the binarizers' schedules as it continues the lr
        at, length = cfg.schedule.offset + epoch, cfg.schedule.length
        schedule = apply_quant_schedule(self.model, cfg.quant, at, length)
        for technique in self.techniques:
            schedule.update(technique.epoch_start(self, epoch) or {})  # None: no values
        train = self.train_epoch(epoch)
        distributed.sync_buffers(self.model)
        before_eval: dict[str, float] = {}
        for technique in self.techniques:
            before_eval.update(technique.before_eval(self, epoch) or {})
        val = {**self.evaluate_on("test"), **before_eval}
        if self.loaders.val is not None:
            val.update(self.evaluate_on("heldout"))
        phase = {"phase": self.progress.phase}
        if self.config.phases:
            phase["phase_name"] = self.config.phases[self.progress.phase].name
        # the epoch's wall time (training, statistics, evaluation), and what it ran on and in
        machine = {
            "wall_seconds": time.perf_counter() - began,
            "precision": self.precision,
            "machine": describe_machine(self.device, distributed.rank_and_world()[1]),
        }
        return {
            **phase,
            "epoch": epoch + 1,
            "step": self.progress.step,
            **train,
            **val,
            **schedule,
            **machine,
        }

    def evaluate_on(self, split: str) -> dict[str, float]:
        """:func:`evaluate` the model as it is now on the test split (``"test"``: keys
        ``val_*``) or on the split held out of the training images (``"heldout"``: keys
        ``heldout_*``)."""
        loader = {"test": self.loaders.eval, "heldout": self.loaders.val}[split]
        metrics = evaluate(self.eval_forward, loader, self.amp_dtype)
        if split == "test":
            return metrics
        return {k.replace("val_", f"{split}_", 1): v for k, v in metrics.items()}

    # ------------------------------------------------------------------ the run

    @property
    def best_split(self) -> str:
        """Where the best epoch is picked: "val" (the held-out split) or "test"."""
        return self.phase_config.eval.select_on

    def _state(self) -> dict[str, Any]:
        return {
            "progress": asdict(self.progress),
            "best_split": self.best_split,
            "config": self.config.to_dict(),
        }

    def _checkpoint(self, record: dict[str, Any], is_best: bool) -> None:
        run, state = self.run_dir, self._state()
        state["layer_bits"] = layer_bits(self.model)
        if is_best:
            top1 = {k: record[k] for k in ("val_top1", "heldout_top1") if k in record}
            run.save_best(model_tensors(self.model), {**state, **top1})
        tensors, optim_rest = optimizer_state(self.optimizers)
        techniques = {t.name: t.state_dict() for t in self.techniques}
        state["techniques"] = {name: value for name, value in techniques.items() if value}
        run.save_last(
            {**model_tensors(self.model), **tensors},
            {**state, "optimizers": optim_rest, "rng": rng_state()},
        )

    def _restore(self) -> None:
        """Continue from last.safetensors: check that it is a checkpoint of this config,
        set up the phase it was written in (once: nothing was built before), then load the
        model's and the optimizers' tensors, the techniques' state and the RNG states."""
        run = self.run_dir
        tensors, state = read_checkpoint(run.last, self.device)
        needed = {"progress": dict, "optimizers": list, "config": dict, "rng": dict}
        missing = [k for k, kind in needed.items() if not isinstance(state.get(k), kind)]
        if missing:
            raise CheckpointError(
                f"{run.last} is not a last checkpoint of a onebit run (no valid {missing[0]}); "
                "train into another --out"
            )
        try:
            # read through today's schema: a key added since the run started has its default.
            # The user named the recipe: its imports are theirs for the saved config too
            saved = config_from_dict(
                state["config"], source=str(run.last), allowed=self.config.imports
            ).to_dict()
        except ConfigError as err:
            raise CheckpointError(f"cannot resume {run.path}: its saved config: {err}") from None
        now = self.config.to_dict()
        # a model option added since the run started has its default (it builds the same model)
        saved["model"] = {**model_entry(saved["model"]["name"]).defaults, **saved["model"]}
        picked = saved["eval"]["select_on"], now["eval"]["select_on"]
        if picked[0] != picked[1]:
            raise CheckpointError(
                f"cannot resume {run.path}: its best epoch is picked on {picked[0]}, the config "
                f"says eval.select_on: {picked[1]}; resume with select_on: {picked[0]} or train "
                "into another --out"
            )
        for key in ("runtime", "eval"):  # how the run executes and evaluates, not what it trains
            saved.pop(key, None)
            now.pop(key)
        diff = _first_difference(saved, now)
        if diff:
            raise CheckpointError(
                f"cannot resume {run.path}: the config differs at {diff}; resume with the run's "
                f"config ({run.config}) or train into another --out"
            )
        epochs = [phase.schedule.epochs for phase in self.phases]
        self.progress = Progress(**checkpoint_progress(run.last, state, epochs))
        self._setup_phase(self.progress.phase)
        check_layer_bits(self.model, state, run.last)
        with torch.no_grad():
            load_model_tensors(self.model, tensors, run.last)
        restore_optimizers(self.optimizers, tensors, state["optimizers"])
        self._restore_techniques(state.get("techniques", {}), run.last)
        set_rng_state(state["rng"])
        run.keep_metrics_until(self.progress.phase, self.progress.epoch)
        where = f"phase {self.progress.phase + 1}, " if len(self.phases) > 1 else ""
        run.log(
            f"resumed {run.path} after {where}epoch {self.progress.epoch} "
            f"(step {self.progress.step})"
        )

    def _restore_techniques(self, saved: Any, path: Path) -> None:
        """Give each technique its state from a last checkpoint (those that saved one)."""
        if not isinstance(saved, dict):
            raise CheckpointError(
                f"{path}: its techniques' state is damaged; train into another --out"
            )
        for technique in self.techniques:
            if technique.name not in saved:
                continue
            try:
                technique.load_state_dict(saved[technique.name])
            except (KeyError, TypeError, ValueError) as err:
                raise CheckpointError(
                    f"{path}: the state of technique {technique.name} is damaged ({err}); "
                    "train into another --out"
                ) from None

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Run every phase to its last epoch; returns the last epoch's metrics and the best.

        ``resume``: continue from ``last.safetensors`` if the run directory has one (else
        start). Without it an existing checkpoint is an error rather than overwritten.
        The run directory is held (:meth:`RunDir.hold`) until it returns.
        """
        run = self.run_dir
        if run is None:
            raise ValueError("Trainer.fit needs a run directory")
        with run.hold():
            return self._fit(run, resume)

    def _fit(self, run: RunDir, resume: bool) -> dict[str, Any]:
        self.config.runtime.out = str(run.path)
        for stale in run.remove_temporaries():  # a kill in the middle of a write
            run.log(f"removed {stale.name}, a file a stopped run left half-written")
        if self._holds_checkpoint:
            if not resume:
                raise CheckpointError(
                    f"{run.path} already holds a run; pass --resume to continue it or "
                    "--out DIR to start a new one"
                )
            self._restore()
        else:
            run.keep_metrics_until(0, 0)  # a run stopped before its first checkpoint
            world = distributed.rank_and_world()[1]
            where = f"{world} processes on {self.device.type}" if world > 1 else self.device
            precision = "bf16 autocast" if self.precision == "bf16" else "fp32"
            run.log(
                f"training {self.config.model['name']} into {run.path} on {where} "
                f"({describe_machine(self.device, world)}; {precision})"
            )
        run.write_config(self.config)
        record: dict[str, Any] = {}
        for phase in range(self.progress.phase, len(self.phases)):
            if phase != self.progress.phase:
                # best.safetensors holds the best epoch of the current phase: the final
                # phase's at the end (an earlier phase's model is not the recipe's result)
                self.progress = Progress(phase=phase, step=self.progress.step)
                self._setup_phase(phase, carry="phase")
            if len(self.phases) > 1:
                name = self.config.phases[phase].name
                run.log(f"phase {phase + 1}/{len(self.phases)}: {name}")
            epochs = self.phases[phase].schedule.epochs
            for epoch in range(self.progress.epoch, epochs):
                record = self.run_epoch(epoch)
                self.progress.epoch = epoch + 1
                top1 = record["heldout_top1" if self.best_split == "val" else "val_top1"]
                is_best = top1 > self.progress.best_top1
                if is_best:
                    self.progress.best_top1, self.progress.best_epoch = top1, epoch + 1
                run.append_metrics(record)
                run.log(_epoch_line(record, epochs))
                self._checkpoint(record, is_best)
        self._end_phase()
        if record:
            run.log(
                f"best epoch {self.progress.best_epoch}, picked on {self.best_split}: top1 "
                f"{self.progress.best_top1:.2f}%"
            )
        return {
            **record,
            "best_top1": self.progress.best_top1,
            "best_epoch": self.progress.best_epoch,
            "best_split": self.best_split,
        }


def _epoch_line(r: dict[str, Any], epochs: int) -> str:
    extras = "".join(f"  {k} {v:.4g}" for k, v in r.items() if is_schedule_value(k, v))
    return (
        f"epoch {r['epoch']}/{epochs}  train loss {r['train_loss']:.4f} top1 {r['train_top1']:.2f}%"
        f"  val loss {r['val_loss']:.4f} top1 {r['val_top1']:.2f}% top5 {r['val_top5']:.2f}%"
        + (f" (stored BN {r['val_top1_stored']:.2f}%)" if "val_top1_stored" in r else "")
        + (f"  heldout top1 {r['heldout_top1']:.2f}%" if "heldout_top1" in r else "")
        + f"  lr {r['lr']:.4g}{extras}  {r['seconds']:.1f} s  {r['images_per_s']:.0f} img/s"
    )
