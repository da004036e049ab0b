"""Domain augmentation presets, policy serialization, worker-independent dataset, augment stage."""

from __future__ import annotations

import collections
import json
import logging
import typing
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from pipeline.augment import (
    PRESETS,
    RGB_ONLY_TRANSFORMS,
    AugmentedDataset,
    augment_image,
    build_policy,
    load_policy,
    policy_to_dict,
    resolve_specs,
    sample_seed,
)
from pipeline.params import AugmentParams

DOMAINS = sorted(PRESETS)


def _names(policy: A.Compose) -> list[str]:
    return [type(t).__name__ for t in policy.transforms]


def test_registry_matches_params_and_presets_avoid_their_forbidden_transforms() -> None:
    domain_literal = typing.get_args(AugmentParams.model_fields["domain"].annotation)
    assert set(PRESETS) == set(domain_literal)
    for domain, preset in PRESETS.items():
        for name, _ in preset.transforms:
            assert name not in preset.forbidden, (domain, name)
            assert hasattr(A, name), (domain, name)
        assert all(reason.strip() for reason in preset.forbidden.values()), domain


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    domain=st.sampled_from(DOMAINS),
    channels=st.sampled_from([1, 3]),
    height=st.integers(16, 96),
    width=st.integers(16, 96),
    seed=st.integers(0, 2**31),
)
def test_every_preset_keeps_shape_and_dtype(
    domain: str, channels: int, height: int, width: int, seed: int
) -> None:
    if domain == "histopathology":
        width = height  # rot90 symmetries need square tiles (normalize writes square images)
    policy = build_policy(AugmentParams(domain=domain), channels=channels, image_shape=(height, width))
    image = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    for s in (seed, seed + 1):
        out = augment_image(policy, image, s)
        assert out.shape == (height, width, channels) and out.dtype == np.uint8


@pytest.mark.parametrize("domain", DOMAINS)
def test_presets_keep_uint16(domain: str) -> None:
    policy = build_policy(AugmentParams(domain=domain), channels=3, image_shape=(24, 24))
    image = np.random.default_rng(0).integers(0, 65536, (24, 24, 3), dtype=np.uint16)
    out = augment_image(policy, image, 1)
    assert out.shape == image.shape and out.dtype == np.uint16


def test_colour_transforms_are_dropped_from_presets_for_one_channel() -> None:
    for domain in DOMAINS:
        names = _names(build_policy(AugmentParams(domain=domain), channels=1, image_shape=(32, 32)))
        assert not set(names) & RGB_ONLY_TRANSFORMS, (domain, names)
    assert "HEStain" in _names(build_policy(AugmentParams(domain="histopathology"), 3, (32, 32)))


def test_explicit_colour_transform_on_one_channel_is_refused() -> None:
    params = AugmentParams(domain="histopathology", transforms={"HEStain": {"p": 0.5}})
    with pytest.raises(ValueError, match=r"\['HEStain'\] need 3-channel images, but the data has 1 channel"):
        build_policy(params, channels=1, image_shape=(32, 32))


def test_forbidden_transform_is_refused_naming_transform_domain_and_reason() -> None:
    params = AugmentParams(
        domain="chest_xray", transforms={"Affine": {"rotate": 5}, "VerticalFlip": {"p": 0.5}}
    )
    with pytest.raises(ValueError) as err:
        build_policy(params, channels=1)
    msg = str(err.value)
    assert "'VerticalFlip'" in msg and "'chest_xray'" in msg
    assert PRESETS["chest_xray"].forbidden["VerticalFlip"] in msg
    assert "allow_unsafe" in msg
    with pytest.raises(ValueError, match="'HueSaturationValue' is forbidden for domain 'chest_xray'"):
        build_policy(AugmentParams(domain="chest_xray", transforms={"HueSaturationValue": {}}), channels=3)
    with pytest.raises(ValueError, match="'ChannelShuffle' is forbidden for domain 'fundus'"):
        build_policy(AugmentParams(domain="fundus", transforms={"ChannelShuffle": {}}), channels=3)


def test_allow_unsafe_turns_refusal_into_warning(caplog: pytest.LogCaptureFixture) -> None:
    params = AugmentParams(domain="chest_xray", transforms={"VerticalFlip": {"p": 0.5}}, allow_unsafe=True)
    with caplog.at_level(logging.WARNING, logger="pipeline.augment"):
        policy = build_policy(params, channels=1)
    assert _names(policy) == ["VerticalFlip"]
    assert "forbidden transform VerticalFlip" in caplog.text and "chest_xray" in caplog.text


def test_horizontal_flip_default_and_opt_in(caplog: pytest.LogCaptureFixture) -> None:
    assert "HorizontalFlip" not in _names(build_policy(AugmentParams(domain="chest_xray"), 1))
    with caplog.at_level(logging.WARNING, logger="pipeline.augment"):
        names = _names(build_policy(AugmentParams(domain="chest_xray", horizontal_flip=True), 1))
    assert names[0] == "HorizontalFlip" and "laterality" in caplog.text
    assert "HorizontalFlip" in _names(build_policy(AugmentParams(domain="dermoscopy"), 3))
    assert "HorizontalFlip" not in _names(
        build_policy(AugmentParams(domain="dermoscopy", horizontal_flip=False), 3)
    )
    with pytest.raises(ValueError, match="'HorizontalFlip' is forbidden for domain 'chest_xray'"):
        build_policy(AugmentParams(domain="chest_xray", transforms={"HorizontalFlip": None}), 1)
    with pytest.raises(
        ValueError, match="horizontal_flip is false but augment.transforms lists HorizontalFlip"
    ):
        resolve_specs(
            AugmentParams(domain="generic", transforms={"HorizontalFlip": {}}, horizontal_flip=False), 3
        )


def test_bad_overrides_are_reported() -> None:
    with pytest.raises(ValueError, match="'NoSuchFlip' is not an albumentations"):
        build_policy(AugmentParams(domain="generic", transforms={"NoSuchFlip": {}}), 3)
    with pytest.raises(
        ValueError, match=r"augment.transforms.RandomGamma: unknown argument\(s\) \['gama_limit'\]"
    ):
        build_policy(
            AugmentParams(domain="generic", transforms={"RandomGamma": {"gama_limit": [80, 120]}}), 3
        )
    with pytest.raises(ValueError, match="must keep shape and dtype"):
        build_policy(AugmentParams(domain="generic", transforms={"Resize": {"height": 8, "width": 8}}), 3)
    assert (
        _names(build_policy(AugmentParams(domain="generic", transforms={}, horizontal_flip=False), 3)) == []
    )


def test_policy_round_trip_gives_same_output_for_same_seed(tmp_path: Path) -> None:
    policy = build_policy(AugmentParams(domain="dermoscopy"), channels=3, image_shape=(32, 32))
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy_to_dict(policy, {"domain": "dermoscopy"})))
    loaded = load_policy(path)
    assert _names(loaded) == _names(policy)
    assert isinstance(A.from_dict(json.loads(path.read_text())), A.Compose)  # plain albumentations too
    image = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    outs = [augment_image(policy, image, s) for s in range(5)]
    for s, expected in enumerate(outs):
        np.testing.assert_array_equal(augment_image(loaded, image, s), expected)
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])


def test_load_policy_reports_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text('{"domain": "chest_xray"}')
    with pytest.raises(ValueError, match=f"{path}: expected an albumentations serialization"):
        load_policy(path)


def test_transforms_draw_independently() -> None:
    """Compose.set_random_seed gives every transform an identically seeded RNG (both flips fire
    together); augment_image shares one stream, so all four flip combinations occur."""
    policy = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
    image = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    variants = {
        "none": image,
        "h": image[:, ::-1],
        "v": image[::-1],
        "hv": image[::-1, ::-1],
    }
    seen = collections.Counter()
    for s in range(64):
        out = augment_image(policy, image, s)
        seen.update(k for k, v in variants.items() if np.array_equal(out, v))
    assert set(seen) == set(variants)


def test_sample_seed_depends_on_all_three_parts() -> None:
    base = sample_seed(42, 0, 0)
    assert base == sample_seed(42, 0, 0)
    assert len({base, sample_seed(43, 0, 0), sample_seed(42, 1, 0), sample_seed(42, 0, 1)}) == 4


def _batches(dataset: AugmentedDataset, num_workers: int) -> list[torch.Tensor]:
    loader = DataLoader(dataset, batch_size=4, shuffle=False, num_workers=num_workers)
    return [torch.cat([x.flatten(), y]) for x, y in loader]


def test_augmented_batches_do_not_depend_on_num_workers() -> None:
    images = np.random.default_rng(0).integers(0, 256, (8, 20, 20, 1), dtype=np.uint8)
    labels = np.arange(8) % 3
    policy = build_policy(AugmentParams(domain="chest_xray"), channels=1, image_shape=(20, 20))
    dataset = AugmentedDataset(images, labels, policy, seed=7)
    x, y = dataset[0]
    assert x.shape == (1, 20, 20) and x.dtype == torch.uint8 and y == 0
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        serial, parallel = _batches(dataset, 0), _batches(dataset, 2)
        assert all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True)), epoch
    dataset.set_epoch(0)
    epoch0 = _batches(dataset, 0)
    assert not all(torch.equal(a, b) for a, b in zip(epoch0, serial, strict=True))  # epochs differ
    plain = AugmentedDataset(images, labels, None, seed=7)
    assert torch.equal(plain[3][0], torch.from_numpy(images[3].transpose(2, 0, 1)))


@pytest.mark.parametrize(("domain", "channels"), [("chest_xray", 1), ("dermoscopy", 3)])
def test_stage_writes_policy_and_preview(tmp_path: Path, domain: str, channels: int) -> None:
    from stages.augment import main

    n, size = 5, 24
    processed = tmp_path / "processed"
    processed.mkdir()
    images = np.random.default_rng(1).integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    np.save(processed / "train.npy", images)
    pd.DataFrame(
        {
            "image_id": [f"images/p{i}/a.png" for i in range(n)],
            "label": ["a", "b", "a", "b", "a"],
            "patient_id": [f"p{i}" for i in range(n)],
            "group_id": [f"g{i}" for i in range(n)],
            "label_index": [0, 1, 0, 1, 0],
        }
    ).to_parquet(processed / "train.parquet", index=False)
    (processed / "meta.json").write_text(
        json.dumps(
            {
                "classes": ["a", "b"],
                "channels": channels,
                "image_size": size,
                "dtype": "uint8",
                "max_value": 255,
            }
        )
    )
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "seed": 3,
                "data": {"root": "data"},
                "augment": {
                    "domain": domain,
                    "n_preview_images": 3,
                    "n_preview_variants": 4,
                    "cutmix_alpha": 1.0,
                },
            }
        )
    )
    policy_path, preview_path = tmp_path / "m" / "policy.json", tmp_path / "r" / "preview.png"
    argv = [
        "--params",
        str(params),
        "--processed",
        str(processed),
        "--policy",
        str(policy_path),
        "--preview",
        str(preview_path),
    ]
    assert main(argv) == 0

    raw = json.loads(policy_path.read_text())
    assert raw["augment"]["batch"] == {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "label_smoothing": 0.05}
    assert raw["augment"]["channels"] == channels and raw["augment"]["domain"] == domain
    assert _names(load_policy(policy_path)) == raw["augment"]["transforms"]
    preview = cv2.imread(str(preview_path))
    assert preview is not None and preview.shape == (3 * (128 + 14), (1 + 4) * 128, 3)
    first_bytes = policy_path.read_bytes(), preview_path.read_bytes()
    assert main(argv) == 0  # deterministic: same params -> same outputs
    assert (policy_path.read_bytes(), preview_path.read_bytes()) == first_bytes
