"""The model zoo: every registered model trains a step on CPU; hand-computed checks of FCN's bilinear kernels and
crops, SegNet's index unpooling, U-Net's tiles, ParseNet's L2 normalisation."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_trains_one_step
from wsss.errors import ConfigError
from wsss.models import MODELS, build_model
from wsss.models.blocks import bilinear_kernel, center_crop, crop_offset, reflect_pad

# full-size models whose forward + backward take several seconds on 2 shared cores
HEAVY = {"fcn32s", "fcn16s", "fcn8s", "segnet", "unet", "refinenet"}


def _small_backbone(name: str) -> dict:
    """ResNet models get resnet18 in tests (same architecture, smaller backbone); others keep their own."""
    default = inspect.signature(MODELS[name]).parameters["backbone"].default
    return {"backbone": "resnet18"} if str(default).startswith("resnet") else {}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in MODELS])
def test_every_model_forward_backward(name):
    torch.manual_seed(0)
    assert_trains_one_step(build_model(name, num_classes=3, **_small_backbone(name)))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_runs_image_pyramid_inference(name):
    """What ``wsss predict --scales 0.5,0.75,1.0,1.25 --flip`` does with each model, on a small odd-sized image
    (the 0.5 scale is 20x27 pixels)."""
    import numpy as np

    from wsss.models.inference import segment

    torch.manual_seed(0)
    model = build_model(name, num_classes=3, **_small_backbone(name)).eval()
    image = np.random.default_rng(0).integers(0, 256, (40, 53, 3), dtype=np.uint8)
    probs = segment(model, image, scales=(0.5, 0.75, 1.0, 1.25), flip=True)
    assert probs.shape == (3, 40, 53) and np.isfinite(probs).all()
    assert np.allclose(probs.sum(0), 1.0, atol=1e-5)


@pytest.mark.parametrize("name,kw", [("segnet_basic", {}), ("unet", {"padded": True}), ("pspnet", {}),
                                     ("deeplabv3plus", {}), ("refinenet", {})])
def test_odd_input_sizes_give_input_size_logits(name, kw):
    torch.manual_seed(0)
    model = build_model(name, num_classes=4, **_small_backbone(name), **kw).eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 45, 67)).shape == (1, 4, 45, 67)


def test_builder_errors_name_the_fix():
    with pytest.raises(ConfigError, match="from scratch"):
        build_model("unet", num_classes=2, weights="imagenet")
    with pytest.raises(ConfigError, match="from scratch"):
        build_model("segnet_basic", num_classes=2, weights="imagenet")
    with pytest.raises(ConfigError, match="VGG16"):
        build_model("fcn8s", num_classes=2, backbone="resnet50")
    with pytest.raises(ConfigError, match="imagenet"):
        build_model("pspnet", num_classes=2, backbone="resnet18", weights="coco")


# ----------------------------------------------------------------------------------------------------- FCN
def test_bilinear_kernel_hand_values():
    k4 = bilinear_kernel(2, 4)
    taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert torch.allclose(k4[0, 0], taps[:, None] * taps[None, :])
    assert torch.allclose(k4[1, 1], k4[0, 0])
    assert k4[0, 1].abs().sum() == 0 and k4[1, 0].abs().sum() == 0  # no cross-channel mixing
    k16 = bilinear_kernel(1, 16)[0, 0]
    taps16 = torch.tensor([1, 3, 5, 7, 9, 11, 13, 15, 15, 13, 11, 9, 7, 5, 3, 1]) / 16
    assert torch.allclose(k16, taps16[:, None] * taps16[None, :])
    # stride-2 bilinear upsampling keeps a constant map constant away from the borders
    up = F.conv_transpose2d(torch.ones(1, 1, 5, 5), bilinear_kernel(1, 4), stride=2)
    assert torch.allclose(up[0, 0, 2:-2, 2:-2], torch.ones(8, 8))


def test_crop_offsets_hand_values():
    # Caffe's voc-fcn8s on a 500 px image: pool4 44 -> 34 (offset 5), pool3 88 -> 70 (offset 9)
    assert crop_offset(44, 34) == 5 and crop_offset(88, 70) == 9 and crop_offset(568, 500) == 34
    x = torch.arange(36.0).view(1, 1, 6, 6)
    assert torch.equal(center_crop(x, (2, 3)), torch.tensor([[[[13.0, 14.0, 15.0], [19.0, 20.0, 21.0]]]]))
    with pytest.raises(ValueError):
        crop_offset(3, 4)


@pytest.mark.slow
def test_fcn8s_layers_and_crops_against_hand_computation():
    torch.manual_seed(0)
    model = build_model("fcn8s", num_classes=2).eval()
    assert model.backbone.stage1[0].padding == (100, 100)
    assert isinstance(model.backbone.fc6, nn.Conv2d) and model.backbone.fc6.kernel_size == (7, 7)
    for up in (model.upscore2, model.upscore_pool4):
        assert up.kernel_size == (4, 4) and up.stride == (2, 2) and up.bias is None
        assert torch.equal(up.weight.detach(), bilinear_kernel(2, 4))
    # the final x8 upsampling is fixed: a buffer, not a parameter
    assert "final_upsample_weight" in dict(model.named_buffers())
    assert not any("final_upsample" in n for n, _ in model.named_parameters())
    assert torch.equal(model.final_upsample_weight, bilinear_kernel(2, 16))
    with torch.no_grad():  # make the zero-initialised skip scores matter
        model.score_pool4.weight.normal_(std=0.01)
        model.score_pool3.weight.normal_(std=0.01)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        pool3, pool4, fc7 = model.backbone(x)
        # 64 + 2*100 - 2 conv -> 262 -> pools (ceil) 131, 66, 33, 17, 9 -> fc6 (7x7) 3
        assert pool3.shape[-1] == 33 and pool4.shape[-1] == 17 and fc7.shape[-1] == 3
        up2 = model.upscore2(model.score_fr(fc7))  # (3 - 1) * 2 + 4 = 8
        fuse4 = up2 + model.score_pool4(pool4)[..., 4:12, 4:12]  # offset (17 - 8) // 2 = 4
        up4 = model.upscore_pool4(fuse4)  # 18
        fuse3 = up4 + model.score_pool3(pool3)[..., 7:25, 7:25]  # offset (33 - 18) // 2 = 7
        up8 = F.conv_transpose2d(fuse3, bilinear_kernel(2, 16), stride=8)  # (18 - 1) * 8 + 16 = 152
        expected = up8[..., 44:108, 44:108]  # offset (152 - 64) // 2 = 44
        assert torch.allclose(model(x), expected, atol=1e-5)


# --------------------------------------------------------------------------------------------------- SegNet
def test_index_unpooling_hand_values():
    from wsss.models.segnet import pool_with_indices, unpool

    x = torch.tensor([[1.0, 5, 2, 0], [3, 4, 8, 1], [0, 2, 6, 7], [9, 1, 3, 2]]).view(1, 1, 4, 4)
    pooled, indices, size = pool_with_indices(x)
    assert pooled.view(-1).tolist() == [5, 8, 9, 7]
    assert indices.view(-1).tolist() == [1, 6, 12, 11]
    back = unpool(pooled * 10, indices, size)
    expected = torch.zeros(4, 4)
    expected[0, 1], expected[1, 2], expected[3, 0], expected[2, 3] = 50, 80, 90, 70
    assert torch.equal(back[0, 0], expected)


def test_segnet_basic_decoder_uses_the_encoder_indices():
    torch.manual_seed(0)
    model = build_model("segnet_basic", num_classes=3).eval()
    assert len(model.encoder) == 4 and len(model.decoder) == 4
    assert all(layer[0].kernel_size == (7, 7) and layer[0].out_channels == 64 for layer in model.encoder)
    assert not any(isinstance(m, nn.ReLU) for m in model.decoder.modules())  # no ReLU in the decoder
    seen = {}
    model.encoder[0].register_forward_hook(lambda m, i, o: seen.__setitem__("enc1", o))
    model.decoder[-1].register_forward_pre_hook(lambda m, i: seen.__setitem__("dec1_in", i[0]))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 48))
    _, indices = F.max_pool2d(seen["enc1"], 2, 2, return_indices=True)
    at_argmax = F.max_unpool2d(torch.ones_like(indices, dtype=torch.float32), indices, 2, 2,
                               output_size=seen["enc1"].shape[-2:]) > 0
    dec_in = seen["dec1_in"]
    assert dec_in.shape == seen["enc1"].shape
    assert (dec_in[~at_argmax] == 0).all()  # values only where the encoder's maxima were
    assert (dec_in[at_argmax] != 0).float().mean() > 0.9
    # exactly one position per 2x2 window carries a value
    assert torch.equal(at_argmax.float().view(1, 64, 16, 2, 24, 2).sum(dim=(3, 5)), torch.ones(1, 64, 16, 24))


def test_segnet_vgg16_is_symmetric():
    model = build_model("segnet", num_classes=5)
    enc = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    dec = [m for m in model.decoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(enc) == 13 and len(dec) == 13 and dec[-1].out_channels == 5
    assert not any(isinstance(m, (nn.ConvTranspose2d, nn.Upsample)) for m in model.modules())


# ---------------------------------------------------------------------------------------------------- U-Net
def test_unet_layers_and_tiles():
    from wsss.models.unet import unet_tile_size

    model = build_model("unet", num_classes=2).eval()
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 23
    assert all(m.kernel_size == (2, 2) and m.stride == (2, 2) for m in model.upconv)
    assert unet_tile_size(388) == 572  # the paper's tile
    tile = unet_tile_size(4)
    assert tile == 188
    with torch.inference_mode():
        assert model.forward_tile(torch.randn(1, 3, tile, tile)).shape[-1] == 4  # valid convolutions, cropped skips


def test_reflect_pad_wider_than_image():
    x = torch.arange(3.0).view(1, 1, 1, 3)
    out = reflect_pad(x, 0, 0, 5, 1)
    # [0 1 2] mirrored by 2 | 1 -> [2 1 0 1 2 1], then by 3 more on the left -> [1 0 1 | 2 1 0 1 2 1]
    assert out.view(-1).tolist() == [1, 0, 1, 2, 1, 0, 1, 2, 1]
    assert out[0, 0, 0, 5:8].tolist() == [0, 1, 2]
    assert reflect_pad(torch.ones(1, 1, 1, 3), 2, 2, 1, 1).shape == (1, 1, 5, 5)  # 1-pixel rows repeat


# --------------------------------------------------------------------------------------- DeepLab, PSP, Parse
def test_deeplabv1_largefov_layout():
    model = build_model("deeplabv1", num_classes=3).eval()
    fc6 = model.backbone.fc6
    assert fc6.dilation == (12, 12) and fc6.kernel_size == (3, 3) and fc6.out_channels == 1024
    with torch.inference_mode():
        assert model.backbone(torch.randn(1, 3, 64, 64))[-1].shape[-2:] == (8, 8)  # output stride 8


def test_deeplabv3plus_aspp_and_decoder():
    model = build_model("deeplabv3plus", num_classes=3, backbone="resnet18").eval()
    rates = [m[0].dilation[0] for m in model.aspp.branches]
    assert rates == [1, 6, 12, 18]
    assert isinstance(model.aspp.image_pool[0], nn.AdaptiveAvgPool2d)
    assert model.low_level[0].out_channels == 48


def test_pyramid_pooling_bins_and_channels():
    from wsss.models.pspnet import PyramidPoolingModule

    ppm = PyramidPoolingModule(8, (1, 2, 3, 6)).eval()
    sizes = []
    for stage in ppm.stages:
        stage[0].register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:])))
    with torch.inference_mode():
        out = ppm(torch.randn(1, 8, 12, 12))
    assert sizes == [(1, 1), (2, 2), (3, 3), (6, 6)]
    assert out.shape == (1, 16, 12, 12) and ppm.out_channels == 16


def test_l2norm_hand_values():
    from wsss.models.parsenet import L2Norm

    norm = L2Norm(2, initial_scale=10.0)
    x = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    assert torch.allclose(norm(x).view(-1), torch.tensor([6.0, 8.0]))
    assert isinstance(norm.scale, nn.Parameter)


def test_refinenet_units():
    from wsss.models.refinenet import ChainedResidualPooling, ResidualConvUnit

    rcu = ResidualConvUnit(4)
    crp = ChainedResidualPooling(4, blocks=2)
    for m in (*rcu.modules(), *crp.modules()):
        if isinstance(m, nn.Conv2d):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
    x = torch.randn(1, 4, 6, 6)
    assert torch.equal(rcu(x), x)  # zero residual: identity
    assert torch.equal(crp(x), F.relu(x))  # zero pooled paths: the ReLU'd input


# ------------------------------------------------------------------------------------------ train + predict
@pytest.mark.slow
def test_cli_train_and_multiscale_predict_with_a_zoo_model(demo_root, tmp_path):
    import numpy as np
    from click.testing import CliRunner

    from wsss.cli import main
    from wsss.datasets import open_dataset
    from wsss.io import read_csv, read_mask
    from wsss.models.inference import segment
    from wsss.stages.predict import load_trained_model

    runner = CliRunner()
    run = tmp_path / "run"
    res = runner.invoke(main, ["train", "--model", "segnet_basic", "--labels", "gt", "--dataset", str(demo_root),
                               "--run", str(run), "--iterations", "2", "--batch-size", "2", "--crop-size", "48",
                               "--loader-workers", "0"])
    assert res.exit_code == 0, res.output
    scales = (0.5, 0.75, 1.0, 1.25)
    res = runner.invoke(main, ["predict", "--checkpoint", str(run / "train/segnet_basic"), "--dataset",
                               str(demo_root), "--split", "val", "--run", str(run), "--scales",
                               ",".join(map(str, scales))])
    assert res.exit_code == 0, res.output
    pred = run / "predictions/segnet_basic"
    rows = read_csv(pred / "manifest.csv")
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    model, meta = load_trained_model(run / "train/segnet_basic/checkpoint.pt")
    assert meta["model"] == "segnet_basic"
    image = open_dataset(demo_root, "val").load(rows[0]["image_id"]).image
    expected = segment(model, image, scales=scales)
    with np.load(pred / rows[0]["scores"]) as z:
        assert np.allclose(z["scores"].astype(np.float32), expected, atol=2e-3)
    mask = read_mask(pred / rows[0]["mask"])
    assert mask.shape == (64, 80) and (mask == expected.argmax(0)).mean() > 0.99


@pytest.mark.slow
def test_imagenet_fc_layers_are_convolutionalised_and_subsampled(monkeypatch):
    """weights='imagenet' without a download: a seeded torchvision VGG16 stands in for the ImageNet one."""
    import torchvision

    import wsss.models.deeplab_variants as dv
    import wsss.models.fcn as fcn

    torch.manual_seed(0)
    vgg = torchvision.models.vgg16()
    monkeypatch.setattr(fcn, "vgg16", lambda weights=None, **kw: vgg)
    model = fcn.fcn32s(num_classes=2, weights="imagenet")
    assert torch.equal(model.backbone.fc6.weight, vgg.classifier[0].weight.view(4096, 512, 7, 7))
    assert torch.equal(model.backbone.fc7.weight[:, :, 0, 0], vgg.classifier[3].weight)
    assert model.backbone.stage1[0] is vgg.features[0]  # the pretrained convolutions themselves
    del model
    monkeypatch.setattr(dv, "vgg16", lambda weights=None, **kw: vgg)
    trunk = dv.DeepLabV1Trunk(weights="imagenet")
    fc6 = vgg.classifier[0].weight.view(4096, 512, 7, 7)
    assert torch.equal(trunk.fc6.weight, fc6[::4, :, ::3, ::3])  # 1024 filters, taps 0, 3, 6 of 7
    assert torch.equal(trunk.fc6.weight[5, 7, 1, 2], fc6[20, 7, 3, 6])
    assert torch.equal(trunk.fc7.weight[:, :, 0, 0], vgg.classifier[3].weight[::4, ::4])
    assert torch.equal(trunk.fc7.bias, vgg.classifier[3].bias[::4])
