"""Recipe-fidelity options: each one changes what it says (docs/training.md, "Seed commands")."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from onebit.config import config_from_dict
from onebit.errors import ConfigError
from onebit.models import create_model
from onebit.train.distill import DistillConfig, TeacherConfig, load_teacher
from onebit.train.optim import OptimConfig, build_optimizers

ROOT = Path(__file__).resolve().parent.parent


def _decayed(model: torch.nn.Module, optim: OptimConfig) -> set[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    (opt,) = build_optimizers(model, optim)
    return {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}


def test_decay_filter_decays_what_the_recu_imagenet_code_decays():
    # ReCU / FIRNet imagenet/main.py: weight decay on the parameters whose name contains
    # "conv" or "fc": conv weights and ReCU's alpha, the classifier; not BatchNorm, not the
    # move biases, not the downsample conv
    model = create_model("firnet18", method="recu", num_classes=10)
    optim = OptimConfig(weight_decay=1e-4, decay_filter=["*conv*", "*fc*"])
    decayed = _decayed(model, optim)
    names = [n for n, _ in model.named_parameters()]
    assert decayed == {n for n in names if "conv" in n or "fc" in n}
    assert "layer1.0.conv1.alpha" in decayed and "fc.bias" in decayed
    assert not any(".bn" in n or "move" in n or "shortcut" in n for n in decayed)
    assert "layer2.0.shortcut.0.weight" in names and "bn1.weight" in names
    # without the filter every parameter is decayed (optim.decay: all)
    assert _decayed(model, OptimConfig(weight_decay=1e-4)) == set(names)


def test_decay_filter_errors():
    model = create_model("resnet20", method="recu")
    with pytest.raises(ConfigError, match=r"optim\.decay_filter.*matches no parameter"):
        build_optimizers(model, OptimConfig(decay_filter=["*cnv*"]))
    with pytest.raises(ConfigError, match=r"optim\.decay .*optim\.decay_filter"):
        config_from_dict(
            {"model": {"name": "resnet20"}, "optim": {"decay": "conv", "decay_filter": ["*"]}}
        )


def test_teacher_bn_mode_train_uses_batch_statistics_and_keeps_the_stored_ones(tmp_path):
    torch.manual_seed(0)
    spec = {"name": "resnet20", "method": "fp"}
    model = create_model(**spec, num_classes=10, in_chans=1)
    with torch.no_grad():  # stored statistics far from any batch's
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.fill_(3.0)
                m.running_var.fill_(9.0)
    file = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, file)
    options = {"num_classes": 10, "in_chans": 1}
    x = torch.randn(16, 1, 32, 32)
    teachers = {}
    for mode in ("eval", "train"):
        cfg = TeacherConfig(model=spec, checkpoint=str(file), bn_mode=mode)
        teachers[mode] = load_teacher(cfg, options, 0, torch.device("cpu"))
    with torch.no_grad():
        stored, batch = teachers["eval"](x), teachers["train"](x)
        reference = model.train()(x)  # what a teacher never put in eval mode computes
    assert torch.allclose(batch, reference, atol=1e-5)
    assert not torch.allclose(stored, batch, atol=1e-2)
    # the stored statistics stay as trained, and nothing trains
    bn = teachers["train"].bn1
    assert bn.training and torch.all(bn.running_mean == 3.0)
    assert not any(p.requires_grad for p in teachers["train"].parameters())
    assert DistillConfig(TeacherConfig(model=spec)).teacher.bn_mode == "eval"


@pytest.mark.parametrize("order", ["after_step", "before_step"])
def test_latent_order_clamps_before_or_after_the_step(order, one_thread):
    # BNEW's CIFAR code: backward, clamp / prox, optimizer step; onebit's default steps first
    from onebit.config import load_config
    from onebit.data import Loaders
    from onebit.train import Trainer
    from onebit.train.regularizers import binary_weights

    overrides = [
        "data.subset=16",
        "data.eval_subset=16",
        "data.batch_size=16",
        "runtime.device=cpu",
        "runtime.compile=false",
        "optim.lr=5.0",  # one Adam step moves every weight by ~5: far outside [-1, 1]
        f"latent.order={order}",
    ]
    config = load_config(ROOT / "configs/fmnist/birealnet8_bnew_phase1.yaml", overrides)
    trainer = Trainer(config)
    assert isinstance(trainer.loaders, Loaders)
    x, y = next(iter(trainer.loaders.train.batches(0)))
    trainer._set_lr(0, 0, 1)
    for _ in range(2):
        trainer._step(x, y)
    largest = max(w.detach().abs().max().item() for _, w in binary_weights(trainer.model))
    if order == "after_step":
        assert largest <= 1.0
    else:  # clamped, then stepped: the weights the next forward pass sees are unclamped
        assert largest > 2.0


def test_irnet_1w32a_network_is_the_official_normal_block_with_relu(one_thread):
    # htqin/IR-Net CIFAR-10/ResNet20/1w32a resnet.py: stem conv + BN (no activation); blocks
    # IRConv -> BN -> ReLU -> IRConv -> BN -> + option-A shortcut -> ReLU; avgpool -> BN1d ->
    # ReLU -> Linear
    from onebit.config import load_config
    from onebit.models.resnet import BasicBlock

    config = load_config(ROOT / "configs/cifar10/resnet20_irnet_1w32a.yaml")
    model = create_model(**config.model).eval()
    assert isinstance(model.act1, torch.nn.Identity)
    assert isinstance(model.head.act, torch.nn.ReLU)
    block = model.stages[1][0]
    assert isinstance(block, BasicBlock) and block.structure == "normal"
    assert isinstance(block.act1, torch.nn.ReLU) and isinstance(block.act2, torch.nn.ReLU)
    assert block.conv1.bits == "1w32a"
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        inner = block.act1(block.bn1(block.conv1(x)))
        shortcut = torch.nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))
        expected = torch.relu(block.bn2(block.conv2(inner)) + shortcut)
        assert torch.allclose(block(x), expected, atol=1e-5)  # bn_act's rounding order
        feats = model.stages(model.act1(model.bn1(model.conv1(torch.randn(2, 3, 32, 32)))))
        pooled = model.head.bn(feats.mean(dim=(2, 3)))
        assert torch.allclose(model.head(feats), model.head.fc(torch.relu(pooled)), atol=1e-6)
    # the same parameters as the 1w1a network (ReLUs have none): 0.27 M
    same = create_model("resnet20", method="irnet")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in same.parameters())


def test_bireal_input_act_acts_on_the_conv_input_only():
    # the Caffe recipe's real-valued pre-training: the nonlinearity sits where the sign will be
    model = create_model("birealnet18", method="bireal_caffe", bits="32w32a", input_act="relu")
    block = model.layer1[1]
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        expected = block.bn(block.conv(torch.relu(x))) + x  # the shortcut keeps x as it is
        # 1e-5: the block's fused BatchNorm pass (onebit.nn.bn_act) rounds in its own order
        assert torch.allclose(block(x), expected, atol=1e-5)
    plain = create_model("birealnet18", method="bireal_caffe", bits="32w32a")
    assert plain.state_dict().keys() == model.state_dict().keys()
    binary = create_model("birealnet18", method="bireal_caffe")
    assert binary.layer1[0].conv.weight_spec.name == "magnitude_aware"


def test_real2binary_downsample_conv_is_the_mmcls_shortcut():
    larq = create_model("real2binary18", input_hw=64, num_classes=10)
    mmcls = create_model("real2binary18", input_hw=64, num_classes=10, downsample="conv")
    down = mmcls.layer2[0][0].downsample
    assert isinstance(down[0], torch.nn.Conv2d) and down[0].stride == (2, 2)
    assert isinstance(down[1], torch.nn.BatchNorm2d) and len(down) == 2
    assert isinstance(larq.layer2[0][0].downsample[0], torch.nn.AvgPool2d)
    x = torch.randn(2, 3, 64, 64)
    assert mmcls(x).shape == larq(x).shape == (2, 10)


def test_bireal_caffe_recipe_phases():
    from onebit.config import load_config

    config = load_config(ROOT / "configs/imagenet/birealnet18_bireal_caffe.yaml")
    phases = config.phase_configs()
    assert [p.model.get("input_act") for p in phases] == [
        "relu",
        "leakyclip",
        "hardtanh",
        None,
        None,
    ]
    assert [p.model["bits"] for p in phases] == ["32w32a"] * 3 + ["1w1a"] * 2
    binary, bn = phases[3], phases[4]
    assert (binary.optim.name, binary.optim.lr, binary.optim.weight_decay) == ("sgd", 0.01, 0.0)
    assert (binary.schedule.epochs, binary.schedule.milestones) == (20, [10, 15])
    assert bn.latent.freeze and bn.optim.train == "batchnorm" and bn.schedule.epochs == 1
