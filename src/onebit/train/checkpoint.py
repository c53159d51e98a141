"""Checkpoints: tensors in safetensors, everything else in JSON, every write atomic.

A checkpoint file ``X.safetensors`` holds the tensors (``model.<key>``, and for ``last``
``optim.<i>.<param>.<key>``); its safetensors metadata key ``onebit`` holds the JSON state
(format, kind, epoch, step, best metric, RNG states, optimizers' non-tensor state, the
techniques' state, the fully resolved config). ``last.json`` is a readable copy of that state.
Because the state travels inside the tensor file, one ``os.replace`` publishes a checkpoint: a
run killed at any moment leaves either the old or the new checkpoint, never a mix. Nothing is
ever unpickled.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from onebit.errors import CheckpointError, ImportNotAllowedError, OneBitError
from onebit.io import atomic_write
from onebit.user_code import import_modules

if TYPE_CHECKING:
    from onebit.config import Config

FORMAT = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`onebit.io.atomic_write`)."""
    atomic_write(path, data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


# --------------------------------------------------------------------------- state <-> tensors


def rng_state() -> dict[str, Any]:
    """The torch RNG states (CPU, and every CUDA device) as base64 strings."""
    state = {"cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if torch.cuda.is_available():
        state["cuda"] = [
            base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()
        ]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s states; CheckpointError if they are damaged."""

    def tensor(text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(text, validate=True)), dtype=torch.uint8)

    try:
        torch.set_rng_state(tensor(state["cpu"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([tensor(s) for s in state["cuda"]])
    except (KeyError, TypeError, ValueError, RuntimeError, binascii.Error) as err:
        detail = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise CheckpointError(f"the checkpoint's RNG state is damaged ({detail})") from None


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"model.{k}": v.detach() for k, v in model.state_dict().items()}


def optimizer_state(
    optimizers: list[torch.optim.Optimizer],
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Split the optimizers' state dicts into tensors and JSON-able rest."""
    tensors, rest = {}, []
    for i, opt in enumerate(optimizers):
        sd = opt.state_dict()
        plain: dict[str, dict[str, Any]] = {}
        for pid, values in sd["state"].items():
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{i}.{pid}.{key}"] = value
                else:
                    plain.setdefault(str(pid), {})[key] = value
        rest.append({"param_groups": sd["param_groups"], "state": plain})
    return tensors, rest


def restore_optimizers(
    optimizers: list[torch.optim.Optimizer],
    tensors: dict[str, torch.Tensor],
    rest: list[dict[str, Any]],
) -> None:
    if len(rest) != len(optimizers):
        raise CheckpointError(
            f"the checkpoint has {len(rest)} optimizer(s), the config builds {len(optimizers)}"
        )
    for i, (opt, saved) in enumerate(zip(optimizers, rest, strict=True)):
        try:
            state: dict[int, dict[str, Any]] = {
                int(pid): dict(values) for pid, values in saved["state"].items()
            }
            prefix = f"optim.{i}."
            for name, value in tensors.items():
                if name.startswith(prefix):
                    pid, key = name[len(prefix) :].split(".", 1)
                    state.setdefault(int(pid), {})[key] = value
            opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
        except (ValueError, KeyError, RuntimeError, TypeError, AttributeError) as err:
            detail = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
            raise CheckpointError(f"optimizer state does not match the model: {detail}") from None
        for group in opt.param_groups:  # a buffer of another shape fails only at the next step
            for p in group["params"]:
                for key, value in opt.state.get(p, {}).items():
                    if torch.is_tensor(value) and value.ndim and value.shape != p.shape:
                        raise CheckpointError(
                            f"optimizer state does not match the model: {key} of shape "
                            f"{tuple(value.shape)} for a parameter of shape {tuple(p.shape)}"
                        )


def _contiguous_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


# the header's key for the SHA-256 of the file's tensor bytes (a training checkpoint's; the
# format-1 .onebit files' "onebit_sha256" is another key, which format.py recognises them by)
DATA_SHA256 = "onebit_data_sha256"


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors' names, dtypes, shapes and bytes (CPU, contiguous), by name."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Atomically write ``tensors`` with the JSON ``state`` in the file's metadata, and the
    SHA-256 of the tensor bytes, which :func:`read_checkpoint` checks: a flipped bit in the
    weights is an error, not a silently different model."""
    tensors = _contiguous_cpu(tensors)
    metadata = {"onebit": json.dumps({"format": FORMAT, **state}), DATA_SHA256: _digest(tensors)}
    atomic_write_bytes(path, save_safetensors(tensors, metadata=metadata))


def read_checkpoint(
    path: Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors on ``device``, state) of a checkpoint file; CheckpointError if it is not one."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror}") from None
    try:
        tensors = load_safetensors(raw)  # validates the header and every tensor's extent
        header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    except (SafetensorError, ValueError, RecursionError) as err:
        from onebit.deploy.graph import is_graph_file

        if is_graph_file(raw[:8]) or Path(path).suffix == ".onebit":
            raise CheckpointError(
                f"{path} is an exported .onebit file, not a training checkpoint: run it with "
                "`onebit eval FILE` or onebit-run; export from the run directory it came from"
            ) from None
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise CheckpointError(
            f"{path} is not a safetensors checkpoint (corrupt: {reason})"
        ) from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    digest = meta.get(DATA_SHA256) if isinstance(meta, dict) else None
    if digest is not None and digest != _digest(tensors):
        raise CheckpointError(
            f"{path} is damaged: its tensors are not the bytes written (checksum mismatch); "
            "use another checkpoint of the run (best or last) or train again"
        )
    meta = meta.get("onebit") if isinstance(meta, dict) else None
    try:
        state = json.loads(meta) if isinstance(meta, str) else {}
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path}: its onebit metadata is not valid JSON") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: its onebit metadata is not a JSON object")
    if state.get("format", FORMAT) != FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {str(state['format'])[:40]}, expected {FORMAT}"
        )
    return {k: v.to(device) for k, v in tensors.items()}, state


def layer_bits(model: nn.Module) -> dict[str, str]:
    """{binary layer name: "1w1a"-style bits}: what a checkpoint records of the architecture
    beyond tensor names and shapes (a 1w1a and a 1w32a layer hold the same tensors)."""
    from onebit.nn.binary import BinaryLayer

    return {n: m.bits for n, m in model.named_modules() if isinstance(m, BinaryLayer)}


def check_layer_bits(model: nn.Module, state: dict[str, Any], path: Path) -> None:
    """CheckpointError if the model rebuilt from a checkpoint's config binarizes other layers
    (or other sides) than the model whose weights it stores (checkpoints that record it)."""
    saved = state.get("layer_bits")
    if saved is None:
        return
    built = layer_bits(model)
    if saved != built:
        name = next(k for k in sorted(set(saved) | set(built)) if saved.get(k) != built.get(k))
        raise CheckpointError(
            f"{path}: layer {name} was trained as {saved.get(name, 'full precision')}, but the "
            f"stored config builds it as {built.get(name, 'full precision')}; the config in "
            "the file was changed"
        )


def load_model_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Load the ``model.*`` tensors into ``model``; CheckpointError naming a mismatch."""
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{path} does not match the model: {detail}")
    for key, value in own.items():
        if weights[key].shape != value.shape:
            raise CheckpointError(
                f"{path} does not match the model: {key} has shape {tuple(weights[key].shape)}, "
                f"the model {tuple(value.shape)}"
            )
    model.load_state_dict(weights)


def load_matching(
    model: nn.Module, weights: dict[str, torch.Tensor], source: str
) -> tuple[list[str], list[str]]:
    """Copy every tensor of ``weights`` whose name is in ``model.state_dict()`` (of a onebit
    checkpoint: its ``model.*`` tensors); the model's other tensors keep their initial
    values. Returns (names the model has and ``weights`` lacks, names of ``weights`` the
    model lacks). A tensor with another shape is a CheckpointError naming it and ``source``."""
    if any(k.startswith("model.") for k in weights):  # a onebit checkpoint
        weights = {k[len("model.") :]: v for k, v in weights.items() if k.startswith("model.")}
    own = model.state_dict()
    for key in own.keys() & weights.keys():
        if weights[key].shape != own[key].shape:
            raise CheckpointError(
                f"cannot carry {key} over from {source}: shape {tuple(weights[key].shape)}, "
                f"the model has {tuple(own[key].shape)}"
            )
    model.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=False)
    return sorted(own.keys() - weights.keys()), sorted(weights.keys() - own.keys())


# --------------------------------------------------------------------------- public loading


def checkpoint_path(path: str | Path) -> Path:
    """The checkpoint a run directory stands for: best.safetensors if there is one (the
    weights with the best evaluation top-1), else last.safetensors; a file stands for itself."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} holds no best.safetensors or last.safetensors")
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: give a run directory or a .safetensors file")
    return path


def checkpoint_config(path: Path, state: dict[str, Any]) -> Config:
    """The config of the weights in a checkpoint: the one stored in it, else the config.yaml
    beside it. For a multi-phase recipe, the config of the phase the checkpoint was written
    in (the last phase when that is not recorded)."""
    from onebit.config import config_from_dict, read_yaml

    data, source = state.get("config"), path
    if data is None:
        source = path.parent / "config.yaml"
        if not source.is_file():
            raise CheckpointError(f"{path} stores no config and there is no {source}")
        data = read_yaml(source)
    try:
        # a run may name only modules already imported (onebit.user_code)
        phases = config_from_dict(data, source=str(source)).phase_configs()
    except ImportNotAllowedError:
        raise
    except OneBitError as err:
        raise CheckpointError(f"the config of {path} is not valid: {err}") from None
    return phases[checkpoint_phase(path, state, len(phases))]


def checkpoint_phase(path: Path, state: dict[str, Any], phases: int) -> int:
    """The phase (0-based) of a recipe of ``phases`` phases a checkpoint was written in (the
    last when it does not say); CheckpointError if its progress names no phase of it."""
    progress = state.get("progress", {})
    phase = progress.get("phase", phases - 1) if isinstance(progress, dict) else None
    if not isinstance(phase, int) or isinstance(phase, bool) or not 0 <= phase < phases:
        raise CheckpointError(
            f"{path}: its progress names phase {str(phase)[:20]}, the config has {phases} phase(s)"
        )
    return phase


def checkpoint_progress(path: Path, state: dict[str, Any], epochs: list[int]) -> dict[str, Any]:
    """Where the run of a last checkpoint stopped, checked against the recipe it resumes,
    whose phases train ``epochs`` epochs: the fields of :class:`onebit.train.trainer.Progress`,
    ``phase`` (:func:`checkpoint_phase`), ``epoch`` (epochs done in that phase, 0 to its
    epochs), ``step`` (optimizer steps of the run, >= 0), ``best_epoch`` (0 to ``epoch``),
    ``best_top1`` (percent; -1 before the first evaluation). CheckpointError naming the
    field otherwise: a resumed loop would run epochs that do not exist or never pick a best."""
    phase = checkpoint_phase(path, state, len(epochs))
    progress = {**state["progress"], "phase": phase}

    def damaged(detail: str) -> CheckpointError:
        return CheckpointError(
            f"{path}: its progress record is damaged ({detail}); train into another --out"
        )

    unknown = sorted(set(progress) - {"phase", "epoch", "step", "best_epoch", "best_top1"})
    if unknown:
        raise damaged(f"unknown key {unknown[0][:40]!r}")
    for key in ("epoch", "step", "best_epoch", "best_top1"):
        value = progress.get(key)
        kind = (int, float) if key == "best_top1" else int
        if not isinstance(value, kind) or isinstance(value, bool):
            what = "a number" if key == "best_top1" else "an integer"
            raise damaged(f"{key} {str(value)[:40]} is not {what}")
    epoch = progress["epoch"]
    if not 0 <= epoch <= epochs[phase]:
        raise damaged(f"epoch {epoch} is not between 0 and schedule.epochs = {epochs[phase]}")
    if progress["step"] < 0:
        raise damaged(f"step {progress['step']} is negative")
    if not 0 <= progress["best_epoch"] <= epoch:
        raise damaged(f"best_epoch {progress['best_epoch']} is not between 0 and epoch {epoch}")
    if not -1 <= progress["best_top1"] <= 100:
        raise damaged(f"best_top1 {progress['best_top1']} is not a percentage")
    return progress


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu", *, imports: Sequence[str] = ()
) -> tuple[nn.Module, Config]:
    """Rebuild a trained model: ``create_model(**config.model)``, weights loaded, eval mode.

    ``path``: a run directory (its best.safetensors if present, else last.safetensors) or a
    ``.safetensors`` checkpoint file (its config is read from the file, else from the
    config.yaml beside it). Returns (model on ``map_location``, config).

    ``imports``: modules to import first (searched on ``sys.path``), those that register what
    the run was trained with; the run's config may name only modules already imported
    (ImportNotAllowedError otherwise, see :mod:`onebit.user_code`).
    """
    from onebit.models import create_model

    import_modules(imports, source="load_model(imports=...)", allowed=imports)
    file = checkpoint_path(path)
    tensors, state = read_checkpoint(file, map_location)
    config = checkpoint_config(file, state)
    try:
        model = create_model(**config.model).to(map_location)
    except OneBitError as err:
        raise CheckpointError(f"{file}: its config does not build a model ({err})") from None
    check_layer_bits(model, state, file)
    load_model_tensors(model, tensors, file)
    return model.eval(), config
