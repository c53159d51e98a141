"""``load(path) -> DeployedModel``: run a ``.onebit`` file on the CPU with xnor-popcount kernels.

The engine rebuilds the network (``onebit.create_model`` from the header, or the instance
passed as ``model=``), loads the full-precision parts, and swaps every ``mode="packed"`` layer
for a :class:`PackedConv2d` (the C kernels of ``kernels/bitconv.c``) and every folded
BatchNorm for ``nn.Identity``. Everything else runs in PyTorch, in the memory format of the
input batch.

Kernels: ``"avx512"`` (VPOPCNTDQ), ``"avx2"`` (vpshufb popcount), ``"portable"`` (any CPU)
are chosen at run time, best first; ``"reference"`` is the same arithmetic in pure PyTorch
(for checking, and used with a warning when the C extension is not built). The environment
variable ``ONEBIT_KERNEL`` or ``load(..., kernel=...)`` forces one.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from onebit.data.spec import InputSpec
from onebit.deploy import format as fmt
from onebit.deploy.export import binary_weight_layers, describe
from onebit.deploy.format import LayerDesc
from onebit.deploy.packing import unpack_weight
from onebit.errors import ConfigError, DataError, ExportError, OneBitError
from onebit.nn import BATCHNORMS
from onebit.user_code import import_modules

try:  # torch first: the kernels then share PyTorch's OpenMP runtime (same libgomp soname)
    from onebit.deploy import _kernels
except ImportError as _err:  # no compiler at install time
    _kernels = None
    _KERNELS_MISSING = f"the C extension onebit.deploy._kernels is not built ({_err})"

KERNEL_ENV = "ONEBIT_KERNEL"
KERNELS = ("avx512", "avx2", "portable", "reference")
LANES = 8  # output channels per weight block of the C kernels


def available_kernels() -> list[str]:
    """The kernels this machine runs, best first; ``"reference"`` (pure PyTorch) is always last."""
    compiled = [] if _kernels is None else [name for name, ok in _kernels.variants() if ok]
    return [k for k in KERNELS if k in compiled] + ["reference"]


def select_kernel(name: str | None = None) -> str:
    """Resolve ``name`` (or ``$ONEBIT_KERNEL``, or ``"auto"``) to an available kernel."""
    requested = name or os.environ.get(KERNEL_ENV) or "auto"
    available = available_kernels()
    if requested == "auto":
        if _kernels is None:
            warnings.warn(
                f"onebit.deploy: {_KERNELS_MISSING}; using the slow pure-PyTorch reference "
                "path. Reinstall onebit with a C compiler (gcc) for the packed kernels.",
                RuntimeWarning,
                stacklevel=3,
            )
        return available[0]
    if requested not in KERNELS:
        raise ConfigError(
            f"kernel {requested!r} (from kernel= or ${KERNEL_ENV}) is not one of auto, "
            f"{', '.join(KERNELS)}"
        )
    if requested not in available:
        why = _KERNELS_MISSING if _kernels is None else "this CPU lacks its instructions"
        raise ConfigError(
            f"kernel {requested!r} cannot run here ({why}); available: {', '.join(available)}"
        )
    return requested


def _variant_index(kernel: str) -> int:
    """The C extension's number for a kernel name (its position in ``variants()``)."""
    return [name for name, _ in _kernels.variants()].index(kernel)


class PackedConv2d(nn.Module):
    """A 1w1a conv (or linear, as a 1x1 conv on a 1x1 image) run on packed bits.

    forward: a = sign(x + act_bias) packed NHWC (+1 = bit 0 also fills the padding border);
    dot = K - 2 popcount(a XOR w) - (tap sums of the out-of-bounds taps), which equals the
    float model's conv of the zero-padded +-1 input; out = dot * out_scale + out_bias (fp32,
    NCHW or channels-last like the input). The reference kernel computes the same with
    ``F.conv2d`` on +-1 floats.
    """

    def __init__(
        self,
        desc: LayerDesc,
        weight_bits: torch.Tensor,
        out_scale: torch.Tensor,
        out_bias: torch.Tensor,
        act_bias: torch.Tensor | None,
        kernel: str,
    ):
        super().__init__()
        self.desc = desc
        self.kernel = kernel
        cout, kh, kw, kc = weight_bits.shape
        self.kc = kc
        ncb = -(-cout // LANES)
        pm1 = 1.0 - 2.0 * unpack_weight(weight_bits, desc.in_channels).float()
        if act_bias is None:
            act_bias = torch.zeros(desc.in_channels, dtype=torch.float32)
        self.register_buffer("act_bias", act_bias.float().contiguous(), persistent=False)
        if kernel == "reference":
            self.register_buffer("weight_pm1", pm1, persistent=False)
            self.register_buffer("out_scale", out_scale.float().view(1, -1, 1, 1), persistent=False)
            self.register_buffer("out_bias", out_bias.float().view(1, -1, 1, 1), persistent=False)
            return
        # kernel layout: 8 output channels interleaved per block, zero-padded to a full block
        blocked = torch.zeros(ncb * LANES, kh * kw, kc, dtype=torch.int64)
        blocked[:cout] = weight_bits.reshape(cout, kh * kw, kc)
        self.register_buffer(
            "weight_blocks",
            blocked.view(ncb, LANES, kh * kw, kc).permute(0, 2, 3, 1).contiguous(),
            persistent=False,
        )
        tapsum = torch.zeros(ncb * LANES, kh * kw, dtype=torch.int32)
        tapsum[:cout] = pm1.sum(dim=1).reshape(cout, kh * kw).round().to(torch.int32)
        self.register_buffer(
            "tapsum",
            tapsum.view(ncb, LANES, kh * kw).permute(0, 2, 1).contiguous(),
            persistent=False,
        )
        for name, value in (("out_scale", out_scale), ("out_bias", out_bias)):
            padded = torch.zeros(ncb * LANES, dtype=torch.float32)
            padded[:cout] = value.float()
            self.register_buffer(name, padded, persistent=False)
        # what every call passes to the C kernels, looked up once (numpy views share memory)
        self._variant = _variant_index(kernel)
        self._arrays = tuple(
            b.numpy() for b in (self.weight_blocks, self.tapsum, self.out_scale, self.out_bias)
        )
        self._act_bias = self.act_bias.numpy()

    def extra_repr(self) -> str:
        d = self.desc
        return (
            f"{d.kind} {d.in_channels}->{d.out_channels}, kernel={d.kernel_size}, "
            f"stride={d.stride}, padding={d.padding}, bn={d.bn!r}, kernel_impl={self.kernel!r}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.desc
        if d.kind == "linear":
            lead = x.shape[:-1]
            out = self._conv(x.reshape(-1, d.in_channels, 1, 1))
            return out.reshape(*lead, d.out_channels)
        return self._conv(x)

    def _output_size(self, x: torch.Tensor) -> tuple[int, int]:
        d = self.desc
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = d.kernel_size, d.stride, d.padding, d.dilation
        if x.dim() != 4 or x.shape[1] != d.in_channels or min(x.shape) == 0:
            raise DataError(
                f"layer {d.name}: input of shape {tuple(x.shape)}, expected "
                f"(N, {d.in_channels}, H, W)"
            )
        h, w = x.shape[2:]
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if oh < 1 or ow < 1:
            raise DataError(f"layer {d.name}: input {h}x{w} is smaller than its {kh}x{kw} kernel")
        return oh, ow

    def pack_input(self, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Binarize and pack an input batch for the C kernel: (int64 [N, H + 2 ph, W + 2 pw,
        ceil(C / 64)], whether x was channels-last)."""
        n, c, h, w = x.shape
        ph, pw = self.desc.padding
        # the output keeps the input's memory format, so the PyTorch layers around run as in
        # the float model (same kernels, same rounding)
        nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        x = x.detach().float()
        x = x if nhwc else x.contiguous()
        array = (x.permute(0, 2, 3, 1) if nhwc else x).numpy()
        packed = torch.empty(n, h + 2 * ph, w + 2 * pw, self.kc, dtype=torch.int64)
        _kernels.pack(
            array,
            nhwc,
            (n, c, h, w),
            (ph, pw),
            self._act_bias,
            packed.numpy(),
            self._variant,
            torch.get_num_threads(),
        )
        return packed, nhwc

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        d = self.desc
        oh, ow = self._output_size(x)
        if self.kernel == "reference":
            x = x.detach().float()
            signs = torch.where(x + self.act_bias.view(1, -1, 1, 1) >= 0, 1.0, -1.0)
            dot = F.conv2d(signs, self.weight_pm1, None, d.stride, d.padding, d.dilation)
            return dot.round() * self.out_scale + self.out_bias
        packed, nhwc = self.pack_input(x)
        n, cout = x.shape[0], d.out_channels
        shape = (n, oh, ow, cout) if nhwc else (n, cout, oh, ow)
        out = torch.empty(shape, dtype=torch.float32)
        geometry = (
            n,
            *x.shape[2:],
            d.in_channels,
            cout,
            *d.kernel_size,
            *d.stride,
            *d.padding,
            *d.dilation,
        )
        _kernels.conv(
            packed.numpy(),
            *self._arrays,
            out.numpy(),
            nhwc,
            geometry,
            self._variant,
            torch.get_num_threads(),
        )
        return out.permute(0, 3, 1, 2) if nhwc else out


class DeployedModel(nn.Module):
    """What :func:`load` returns: the rebuilt network with packed layers, in eval mode.

    Call it on a normalised float batch (N, C, H, W) (``input_spec.describe()`` says which);
    it runs without autograd. ``predict(images)`` takes raw images instead (uint8 or [0, 1]
    floats at the dataset's own size) and returns class indices; ``preprocess(images)`` is its
    first half. The packed layers keep the memory format of their input (NCHW, or
    channels-last if the batch is channels-last). ``header`` is the file's JSON header,
    ``layers`` its LayerDescs, ``kernel`` the kernel used, ``input_spec`` the stored
    :class:`~onebit.data.InputSpec` (None in files exported without one), ``class_names``
    its class names (None where unknown).
    """

    def __init__(
        self, network: nn.Module, header: dict[str, Any], layers: list[LayerDesc], kernel: str
    ):
        super().__init__()
        self.network = network.eval()
        self.header = header
        self.layers = layers
        self.kernel = kernel
        spec = header.get("input")
        self.input_spec = None if spec is None else InputSpec.from_json(spec, "header")
        self.class_names = self.input_spec.class_names if self.input_spec else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_batch(x)
        with torch.no_grad():
            try:
                return self.network(x)
            except RuntimeError as err:  # a size the network cannot take
                raise ValueError(
                    f"the deployed model cannot run a batch of shape {tuple(x.shape)}: it "
                    f"expects {self._expected()} ({str(err).splitlines()[0][:160]})"
                ) from None

    def _expected(self) -> str:
        if self.input_spec is None:
            return "the input size it was trained on"
        return self.input_spec.describe() + "; predict(images) takes raw images"

    def _check_batch(self, x: object) -> None:
        if not torch.is_tensor(x) or x.ndim != 4 or not x.is_floating_point():
            shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
            raise ValueError(f"the deployed model takes {self._expected()}; got {shape}")
        spec = self.input_spec
        if spec is not None and x.shape[1] != spec.channels:
            raise ValueError(
                f"the deployed model takes {self._expected()}; got {x.shape[1]} channels "
                f"(shape {tuple(x.shape)})"
            )

    def preprocess(self, images: Any) -> torch.Tensor:
        """Raw images (see :meth:`onebit.data.InputSpec.preprocess`) -> the network's batch."""
        if self.input_spec is None:
            raise ValueError(
                "this .onebit file has no input spec (exported by an older onebit); export "
                "it again to preprocess raw images, or call the model on normalised batches"
            )
        return self.input_spec.preprocess(images)

    def predict(self, images: Any, batch_size: int = 256) -> torch.Tensor:
        """Class indices (int64, one per image) of raw ``images``; names: ``class_names``."""
        x = self.preprocess(images)
        out = [self(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def load(
    path: str | Path,
    model: nn.Module | None = None,
    *,
    kernel: str | None = None,
    imports: Sequence[str] = (),
) -> DeployedModel:
    """Load a ``.onebit`` file as a runnable :class:`DeployedModel`.

    The network is rebuilt from the header's registry name and options; a file exported from
    a model outside the registry (e.g. ``onebit.binarize(my_net)``) needs ``model=`` an
    instance of the same architecture (it is copied, not modified). ``kernel``: see
    :func:`select_kernel`. A malformed file, or one that does not match the model, raises
    ExportError.

    The file runs no code: its header's ``imports`` (the modules that register the user's
    binarizers, methods or model) must already be imported, or be named in ``imports``, which
    are imported first (searched on ``sys.path``); any other is an ImportNotAllowedError.
    """
    import_modules(imports, source="onebit.deploy.load(imports=...)", allowed=imports)
    fmt.check_format(path)
    header, layers, tensors = fmt.read(path)
    kernel = select_kernel(kernel)
    network = _rebuild(header, model, path)
    _install(network, header, layers, tensors, kernel, path)
    return DeployedModel(network, header, layers, kernel)


def _rebuild(header: dict[str, Any], model: nn.Module | None, path: str | Path) -> nn.Module:
    if model is not None:
        return copy.deepcopy(model).cpu().eval()
    spec = header["model"]
    if spec["name"] is None:
        cls = spec.get("class", "a model")
        raise ExportError(
            f"{path}: holds {cls}, built outside the model registry; load it with "
            "onebit.deploy.load(path, model=an instance of the same architecture)"
        )
    from onebit.models import create_model

    # the user's registrations, by module name: only those already imported
    import_modules(header.get("imports"), source=str(path))
    try:
        return create_model(spec["name"], **spec["options"]).eval()
    except (OneBitError, TypeError, ValueError, RuntimeError) as err:  # options from the file
        raise ExportError(f"{path}: cannot rebuild model {spec['name']!r}: {err}") from None


def _mismatch(path: str | Path, what: str) -> ExportError:
    return ExportError(
        f"{path}: {what}; the file does not match this model (load a registry model without "
        "model=, or pass an instance of the exported architecture)"
    )


def _install(
    network: nn.Module,
    header: dict[str, Any],
    layers: list[LayerDesc],
    tensors: dict[str, torch.Tensor],
    kernel: str,
    path: str | Path,
) -> None:
    binary = dict(binary_weight_layers(network))
    if set(binary) != {d.name for d in layers}:
        extra = sorted(set(binary) ^ {d.name for d in layers})
        raise _mismatch(path, f"binary-weight layer {extra[0]!r} is in only one of the two")
    float_weights = set()
    for d in layers:
        layer = binary[d.name]
        if describe(d.name, layer, d.bn) != d:
            raise _mismatch(path, f"layer {d.name} differs")
        bits = tensors[f"{d.name}.weight_bits"]
        if d.mode == "packed":
            act_bias = tensors.get(f"{d.name}.act_bias")
            out_scale, out_bias = tensors[f"{d.name}.out_scale"], tensors[f"{d.name}.out_bias"]
            packed = PackedConv2d(d, bits, out_scale, out_bias, act_bias, kernel)
            network.set_submodule(d.name, packed)
        else:
            # The stored weight is the binary weight itself (+-scale), so the layer stops
            # binarizing it; binary_weight() of the trained layer gave exactly these values.
            signs = 1.0 - 2.0 * unpack_weight(bits, d.in_channels // d.groups).float()
            weight = signs * tensors[f"{d.name}.weight_scale"].view(-1, 1, 1, 1)
            # contiguous like the trained layer's binary_weight(), so PyTorch picks the same conv
            # algorithm and the result is bit-identical
            weight = weight.reshape(layer.weight.shape).to(layer.weight.dtype).contiguous()
            layer.weight = nn.Parameter(weight, requires_grad=False)
            layer.weight_spec = None
            float_weights.add(f"{d.name}.weight")
    for bn_name in header["folded"]:
        try:
            bn = network.get_submodule(bn_name)
        except AttributeError:
            bn = None
        if not isinstance(bn, BATCHNORMS):
            raise _mismatch(path, f"folded BatchNorm {bn_name!r} is not a BatchNorm of the model")
        network.set_submodule(bn_name, nn.Identity())
    _load_fp_state(network, layers, tensors, float_weights, path)


def _load_fp_state(
    network: nn.Module,
    layers: list[LayerDesc],
    tensors: dict[str, torch.Tensor],
    skip: set[str],
    path: str | Path,
) -> None:
    layer_tensors = {name for d in layers for name in d.tensor_shapes()}
    stored = {k: v for k, v in tensors.items() if k not in layer_tensors}
    target = {k: v for k, v in network.state_dict().items() if k not in skip}
    if set(stored) != set(target):
        missing, extra = sorted(set(target) - set(stored)), sorted(set(stored) - set(target))
        name = (missing or extra)[0]
        raise _mismatch(path, f"parameter {name!r} is {'missing' if missing else 'unexpected'}")
    for key, value in stored.items():
        if value.shape != target[key].shape:
            raise _mismatch(path, f"parameter {key!r} has shape {tuple(value.shape)}")
    network.load_state_dict({k: v.to(target[k].dtype) for k, v in stored.items()}, strict=False)
