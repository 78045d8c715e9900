"""DeepLab-v2 and the ResNet backbones: shapes, dilation, forward/backward, registry."""

import pytest
import torch

from wsss.errors import ConfigError
from wsss.models import MODELS, build_model, split_parameters
from wsss.models.backbones import ResNetBackbone
from wsss.models.backbones.vgg import vgg16
from wsss.models.deeplab import DeepLabV2


@pytest.mark.parametrize("arch,os_", [("resnet18", 8), ("resnet18", 16), ("resnet50", 8)])
def test_backbone_output_stride(arch, os_):
    torch.manual_seed(0)
    net = ResNetBackbone(arch, output_stride=os_).eval()
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == list(net.channels)
    assert feats[-1].shape[-2:] == (64 // os_, 96 // os_)
    assert feats[0].shape[-2:] == (16, 24)


def test_deeplabv2_forward_backward():
    torch.manual_seed(0)
    model = build_model("deeplabv2", num_classes=5, backbone="resnet18")
    assert isinstance(model, DeepLabV2)
    assert [conv.dilation for conv in model.head.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 5, 64, 64)
    target = torch.randint(0, 5, (2, 64, 64))
    target[:, :4] = 255
    loss = torch.nn.functional.cross_entropy(out, target, ignore_index=255)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.head.branches[3].weight.grad.abs().sum() > 0


def test_aspp_branches_are_summed():
    torch.manual_seed(0)
    model = build_model("deeplabv2", num_classes=3, backbone="resnet18").eval()
    feats = torch.randn(1, 512, 8, 8)
    expected = sum(branch(feats) for branch in model.head.branches)
    assert torch.allclose(model.head(feats), expected, atol=1e-6)


def test_split_parameters_and_registry():
    model = build_model("deeplabv2", num_classes=4, backbone="resnet18")
    backbone, head = split_parameters(model)
    assert len(head) == 8  # 4 branches x (weight, bias)
    assert len(backbone) + len(head) == len(list(model.parameters()))
    assert "deeplabv2" in MODELS
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("nope", num_classes=3)
    with pytest.raises(ConfigError, match="weights"):
        build_model("deeplabv2", num_classes=3, backbone="resnet18", weights="coco")
    with pytest.raises(ConfigError, match="backbone"):
        build_model("deeplabv2", num_classes=3, backbone="alexnet")


def test_default_backbone_is_resnet101():
    model = build_model("deeplabv2", num_classes=21)
    assert model.backbone.arch == "resnet101" and model.backbone.output_stride == 8
    assert len(model.backbone.layer3) == 23


def test_vgg16_features_pools():
    feats = vgg16().features
    pools = [i for i, m in enumerate(feats) if isinstance(m, torch.nn.MaxPool2d)]
    assert pools == [4, 9, 16, 23, 30]


def test_backbone_from_a_cam_classifier_checkpoint(tmp_path):
    """--weights PATH: a wsss CAM classifier's ResNet becomes the segmentation backbone, tensor for tensor; a
    classifier of another depth, a model without a ResNet backbone and a file without a model are clear errors."""
    from wsss.errors import UnsafeFileError
    from wsss.io import save_checkpoint
    from wsss.models.classifier import build_classifier

    torch.manual_seed(3)
    clf = build_classifier(num_classes=20, backbone="resnet18")
    with torch.no_grad():  # make the BN statistics distinctive too
        for m in clf.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
    path = tmp_path / "classifier.pt"
    save_checkpoint(path, {"model": clf.state_dict(), "meta": {"backbone": "resnet18"}})
    model = build_model("deeplabv2", num_classes=21, backbone="resnet18", weights=str(path))
    source = {k[len("backbone."):]: v for k, v in clf.state_dict().items() if k.startswith("backbone.")}
    target = model.backbone.state_dict()
    assert set(source) == set(target) and all(torch.equal(source[k], target[k]) for k in source)
    random_init = build_model("deeplabv2", num_classes=21, backbone="resnet18")
    assert not torch.equal(random_init.backbone.layer1[0].bn1.running_mean, target["layer1.0.bn1.running_mean"])
    with pytest.raises(ConfigError, match=r"is a resnet18, not a resnet50.*--backbone resnet18"):
        build_model("deeplabv2", num_classes=21, backbone="resnet50", weights=str(path))
    with pytest.raises(ConfigError, match="initialises a --backbone.*U-Net has none"):
        build_model("unet", num_classes=2, weights=str(path))
    save_checkpoint(tmp_path / "other.pt", [1, 2, 3])
    with pytest.raises(ConfigError, match="other.pt: not a state dict"):
        build_model("deeplabv2", num_classes=21, backbone="resnet18", weights=str(tmp_path / "other.pt"))
    with pytest.raises(ConfigError, match="no such file.*imagenet"):
        build_model("deeplabv2", num_classes=21, backbone="resnet18", weights=str(tmp_path / "missing.pt"))
