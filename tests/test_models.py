"""Models: shapes for every arch, channel adaptation, local weights only, bad weight files refused."""

from __future__ import annotations

import pickle

import pytest
import torch

from pipeline.errors import InputError
from pipeline.models import ARCHS, adapt_first_conv, build_model


@pytest.mark.parametrize(
    ("arch", "in_channels"), [(a, 1) for a in ARCHS] + [("small_cnn", 3), ("resnet18", 3)]
)
def test_every_arch_maps_images_to_logits(arch: str, in_channels: int) -> None:
    torch.manual_seed(0)
    model = build_model(arch, in_channels=in_channels, n_classes=3, width=8, dropout=0.1).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 32, 32))
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()


def test_small_cnn_is_small() -> None:
    model = build_model("small_cnn", 1, 3, width=32)
    assert sum(p.numel() for p in model.parameters()) < 500_000


def test_unknown_arch_names_the_key() -> None:
    with pytest.raises(ValueError, match="model.arch: 'vgg' is neither one of"):
        build_model("vgg", 1, 3)


def test_first_conv_adaptation_sums_rgb_for_gray() -> None:
    w = torch.randn(4, 3, 3, 3)
    gray = adapt_first_conv(w, 1)
    assert gray.shape == (4, 1, 3, 3)
    torch.testing.assert_close(gray[:, 0], w.sum(dim=1))
    # A gray image replicated to RGB gives the same response with the summed kernel.
    x = torch.randn(1, 1, 8, 8)
    torch.testing.assert_close(
        torch.nn.functional.conv2d(x, gray), torch.nn.functional.conv2d(x.repeat(1, 3, 1, 1), w)
    )
    assert adapt_first_conv(w, 5).shape == (4, 5, 3, 3)


def test_local_pretrained_weights_are_loaded_and_adapted(tmp_path) -> None:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    imagenet_like = resnet18(weights=None)  # stands in for a local ImageNet file (1000 classes)
    path = tmp_path / "resnet18.pth"
    torch.save(imagenet_like.state_dict(), path)

    model = build_model("resnet18", in_channels=1, n_classes=2, weights_path=path)
    torch.testing.assert_close(model.conv1.weight, imagenet_like.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.layer1[0].conv1.weight, imagenet_like.layer1[0].conv1.weight)
    assert model.fc[-1].out_features == 2  # classifier replaced


def test_weights_of_another_arch_are_refused(tmp_path) -> None:
    path = tmp_path / "small.pth"
    torch.save(build_model("small_cnn", 3, 3).state_dict(), path)
    with pytest.raises(ValueError, match="resnet18"):
        build_model("resnet18", 3, 3, weights_path=path)


def test_missing_weights_file_is_not_downloaded(tmp_path) -> None:
    with pytest.raises(InputError, match="never downloaded"):
        build_model("resnet18", 3, 3, weights_path=tmp_path / "nope.pth")


class _Exploit:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['PWNED_PATH'], 'w').write('pwned')",))


def test_malicious_weights_file_is_refused_without_running_code(tmp_path, monkeypatch) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED_PATH", str(marker))
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"conv1.weight": _Exploit()}, fh)
    with pytest.raises(ValueError, match="weights_only=True"):
        build_model("resnet18", 3, 3, weights_path=path)
    assert not marker.exists()


def _timm_checkpoint(tmp_path, name: str = "test_resnet"):
    """A tiny randomly initialised timm network saved to disk: the stand-in for a local pretrained file."""
    import timm

    torch.manual_seed(1)
    source = timm.create_model(name, pretrained=False)  # 3 channels, 1000 classes, like ImageNet weights
    path = tmp_path / f"{name}.pth"
    torch.save(source.state_dict(), path)
    return source, path


def test_timm_backbone_from_a_local_file_is_adapted_to_gray(tmp_path) -> None:
    source, path = _timm_checkpoint(tmp_path)
    model = build_model("test_resnet", in_channels=1, n_classes=3, dropout=0.1, weights_path=path)
    first = source.pretrained_cfg["first_conv"]
    state, loaded = source.state_dict(), model.state_dict()
    torch.testing.assert_close(loaded[f"{first}.weight"], state[f"{first}.weight"].sum(dim=1, keepdim=True))
    backbone = [k for k in state if not k.startswith(("fc.", f"{first}.weight"))]
    assert backbone and all(torch.equal(loaded[k], state[k]) for k in backbone)
    assert model.get_classifier().out_features == 3  # head re-initialised for our classes
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    # "timm:" forces timm where torchvision has the same name; unknown names say where to look
    assert type(build_model("timm:resnet18", 1, 2)).__module__.startswith("timm")
    with pytest.raises(ValueError, match="timm model name"):
        build_model("no_such_net", 1, 2)


def test_pretrained_normalizer_uses_the_backbone_statistics() -> None:
    from pipeline.models import IMAGENET_STATS, pretrained_normalizer
    from pipeline.processed import Normalizer

    data = Normalizer("standardize", 255.0, 1, (100.0,), (50.0,), (0.0,), (255.0,))
    gray = pretrained_normalizer(data, "resnet18")
    assert gray.mean[0] == pytest.approx(255 * sum(IMAGENET_STATS[0]) / 3)
    assert gray.std[0] == pytest.approx(255 * sum(IMAGENET_STATS[1]) / 3)
    assert gray.fitted_on == "pretrained:resnet18"
    rgb = pretrained_normalizer(
        Normalizer("scale01", 65535.0, 3, (0,) * 3, (1,) * 3, (0,) * 3, (1,) * 3), "test_resnet"
    )
    assert rgb.mode == "standardize" and rgb.mean == pytest.approx((0.5 * 65535,) * 3)  # test_resnet's cfg
