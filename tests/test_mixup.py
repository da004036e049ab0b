"""Label smoothing, mixup/cutmix and the soft-target loss (pipeline/mixup.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.mixup import mix_batch, smooth_targets, soft_cross_entropy


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_smooth_targets_formula_and_rows_sum_to_one() -> None:
    labels = torch.tensor([0, 2, 1, 2])
    t = smooth_targets(labels, n_classes=3, smoothing=0.1)
    assert t.shape == (4, 3) and t.dtype == torch.float32
    torch.testing.assert_close(t.sum(dim=1), torch.ones(4))
    expected = (1 - 0.1) * F.one_hot(labels, 3).float() + 0.1 / 3
    torch.testing.assert_close(t, expected)
    assert t[0, 0].item() == pytest.approx(1 - 0.1 + 0.1 / 3)
    torch.testing.assert_close(smooth_targets(labels, 3, 0.0), F.one_hot(labels, 3).float())


def test_smooth_targets_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        smooth_targets(torch.tensor([0, 3]), 3, 0.1)
    with pytest.raises(ValueError, match="smoothing"):
        smooth_targets(torch.tensor([0, 1]), 3, 1.0)


def test_no_mixing_no_smoothing_is_plain_cross_entropy() -> None:
    logits = torch.randn(8, 4, generator=_gen(1))
    labels = torch.randint(0, 4, (8,), generator=_gen(2))
    x = torch.randn(8, 1, 6, 6, generator=_gen(3))
    targets = smooth_targets(labels, 4, 0.0)
    x_out, t_out = mix_batch(x, targets, mixup_alpha=0.0, cutmix_alpha=0.0, generator=_gen())
    assert torch.equal(x_out, x) and torch.equal(t_out, targets)
    torch.testing.assert_close(soft_cross_entropy(logits, t_out), F.cross_entropy(logits, labels))


def test_smoothing_matches_torch_label_smoothing() -> None:
    """Smoothing is applied once, in the targets: same loss as torch's built-in label_smoothing."""
    logits = torch.randn(8, 5, generator=_gen(4))
    labels = torch.randint(0, 5, (8,), generator=_gen(5))
    loss = soft_cross_entropy(logits, smooth_targets(labels, 5, 0.2))
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels, label_smoothing=0.2))


@pytest.mark.parametrize(("mixup_alpha", "cutmix_alpha"), [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_targets_match_mixed_pixels(mixup_alpha: float, cutmix_alpha: float) -> None:
    """Image k is constant v_k: a mixed image's mean must equal targets @ v, for mixup and cutmix
    alike (cutmix's lambda is the fraction of pixels actually kept)."""
    n, k = 6, 6
    values = torch.arange(1, n + 1, dtype=torch.float32) * 10
    x = values[:, None, None, None].expand(n, 2, 16, 12).clone()
    targets = smooth_targets(torch.arange(n), k, 0.0)  # one class per image
    for seed in range(10):
        x_out, t_out = mix_batch(x, targets, mixup_alpha, cutmix_alpha, _gen(seed))
        torch.testing.assert_close(t_out.sum(dim=1), torch.ones(n))
        assert (t_out >= 0).all()
        torch.testing.assert_close(x_out.mean(dim=(1, 2, 3)), t_out @ values)
    assert torch.equal(x, values[:, None, None, None].expand(n, 2, 16, 12))  # input untouched


def test_mixed_soft_targets_sum_to_one_with_smoothing() -> None:
    targets = smooth_targets(torch.tensor([0, 1, 2, 1, 0]), 3, 0.1)
    x = torch.randn(5, 3, 8, 8, generator=_gen(6))
    _, t_out = mix_batch(x, targets, 0.2, 1.0, _gen(7))
    torch.testing.assert_close(t_out.sum(dim=1), torch.ones(5))


def test_mix_batch_deterministic_given_generator() -> None:
    x = torch.randn(8, 3, 8, 8, generator=_gen(8))
    targets = smooth_targets(torch.randint(0, 3, (8,), generator=_gen(9)), 3, 0.05)
    a = mix_batch(x, targets, 0.2, 1.0, _gen(123))
    b = mix_batch(x, targets, 0.2, 1.0, _gen(123))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    others = [mix_batch(x, targets, 0.2, 1.0, _gen(s))[0] for s in range(5)]
    assert any(not torch.equal(o, a[0]) for o in others)  # different generators mix differently


def test_mix_batch_rejects_integer_images() -> None:
    with pytest.raises(ValueError, match="floating"):
        mix_batch(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.ones(2, 2) / 2, 0.2, 0.0, _gen())
