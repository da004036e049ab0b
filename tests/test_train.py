"""Training: overfit one batch, determinism, prediction, checkpoints (malicious pickle refused),
label-issue drops, early stopping, and a tiny train + evaluate through the stage scripts (also
under torchrun with 2 gloo processes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline import train as tr
from pipeline.augment import build_policy, policy_to_dict
from pipeline.checkpoint import Checkpoint, ModelSpec
from pipeline.distributed import shard_bounds
from pipeline.inference import predict_proba
from pipeline.io import write_json
from pipeline.models import build_model
from pipeline.normalize import fit_normalizer
from pipeline.params import AugmentParams, load_params
from pipeline.processed import Normalizer
from tests.helpers import default_params

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["effusion", "nodule", "normal"]


def _images(n: int, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tiny, learnable gray images: the class decides where a bright square sits."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    x = rng.integers(0, 60, (n, size, size, 1), dtype=np.uint8)
    half = size // 2
    for i, y in enumerate(labels):
        r, c = [(0, 0), (0, half), (half, 0)][y]
        x[i, r : r + half, c : c + half] += 150
    return x, labels


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write_normalizer(x: np.ndarray, path: Path) -> None:
    """normalizer.json fitted on ``x`` (train only), as the normalize stage writes it."""
    write_json(fit_normalizer([x], mode="standardize", max_value=255, channels=x.shape[3]).to_dict(), path)


def _normalizer(tmp_path: Path, x: np.ndarray):
    path = tmp_path / "normalizer.json"
    _write_normalizer(x, path)
    return Normalizer.from_json(path)


def _fit(tmp_path: Path, seed: int = 0, epochs: int = 2, **kw):
    x, y = _images(24)
    torch.manual_seed(seed)
    model = build_model("small_cnn", 1, 3, width=4, dropout=0.0)
    config = tr.TrainConfig(epochs=epochs, batch_size=8, seed=seed, **kw)
    return tr.fit_model(model, x, y, _normalizer(tmp_path, x), config)


def test_overfit_one_batch(tmp_path) -> None:
    x, y = _images(12)
    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 3, width=8, dropout=0.0)
    norm = _normalizer(tmp_path, x)
    config = tr.TrainConfig(epochs=25, batch_size=12, lr=1e-2, weight_decay=0.0, seed=0)
    model = tr.fit_model(model, x, y, norm, config)
    probs = predict_proba(model, x, norm, "cpu")
    assert (probs.argmax(1) == y).all()
    assert probs[np.arange(len(y)), y].mean() > 0.9


def test_same_seed_same_weights_on_cpu(tmp_path) -> None:
    kw = dict(mixup_alpha=0.4, label_smoothing=0.1, warmup_epochs=1)
    a, b = _fit(tmp_path, seed=3, **kw), _fit(tmp_path, seed=3, **kw)
    c = _fit(tmp_path, seed=4, **kw)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_predict_proba_keeps_order_and_sums_to_one(tmp_path) -> None:
    x, _ = _images(10)
    norm = _normalizer(tmp_path, x)
    model = build_model("small_cnn", 1, 3, width=4).eval()
    p_all = predict_proba(model, x, norm, "cpu", batch_size=3)
    assert p_all.shape == (10, 3)
    np.testing.assert_allclose(p_all.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(predict_proba(model, x[4:5], norm, "cpu"), p_all[4:5], rtol=1e-5, atol=1e-6)


def test_early_stopping_and_best_weights(tmp_path) -> None:
    x, y = _images(24)
    records, best = [], []
    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 3, width=4)
    # lr so small that nothing improves after the first epoch -> stops after 1 + patience epochs.
    config = tr.TrainConfig(epochs=20, batch_size=8, lr=1e-12, patience=2, monitor="val_loss")
    tr.fit_model(
        model, x, y, _normalizer(tmp_path, x), config, val_images=x, val_labels=y,
        on_epoch_end=records.append, on_best=lambda r, s: best.append(r),
    )  # fmt: skip
    assert len(records) <= 20 and len(records) >= 3
    assert best[-1]["val_loss"] == min(r["val_loss"] for r in records)
    assert {"train_loss", "val_loss", "val_balanced_accuracy", "val_auroc", "lr"} <= set(records[0])


def test_class_weight_policy_switches_on_beyond_the_ratio() -> None:
    labels = np.repeat([0, 1, 2], [30, 25, 21])  # 30 / 21 = 1.43 <= 1.5
    auto = tr.TrainConfig(class_weights="auto", imbalance_ratio=1.5)
    assert tr.loss_class_weights(labels, 3, auto) is None
    assert tr.loss_class_weights(labels, 3, tr.TrainConfig(class_weights=True)) is not None
    skewed = np.repeat([0, 1, 2], [48, 10, 2])
    w = tr.loss_class_weights(skewed, 3, auto)
    # balanced: n / (K * count), so every class carries the same total weight
    np.testing.assert_allclose(w.numpy() * np.bincount(skewed), 60 / 3, rtol=1e-6)
    assert tr.loss_class_weights(skewed, 3, tr.TrainConfig(class_weights=False)) is None
    with pytest.raises(ValueError, match="train.class_weights"):
        tr.TrainConfig(class_weights="yes")


def _faint_squares(counts: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy gray images where a faint square (15 grey levels over noise of 0-100) gives the class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), counts)
    x = rng.integers(0, 100, (len(labels), 16, 16, 1)).astype(np.uint8)
    for i, y in enumerate(labels):
        r, c = [(0, 0), (0, 8), (8, 0)][y]
        x[i, r : r + 8, c : c + 8] += 15
    return x, labels


def test_imbalanced_training_still_predicts_the_rare_class(tmp_path) -> None:
    """24:5:1 train set: with the default class_weights=auto the rarest class is recalled on a
    balanced held-out set and balanced accuracy is well above chance (1/3); unweighted, the
    network predicts the rare class less often."""
    x, y = _faint_squares([120, 25, 5], seed=0)
    x_test, y_test = _faint_squares([20, 20, 20], seed=1)
    norm = _normalizer(tmp_path, x)
    recall, balanced = {}, {}
    for setting in ("auto", False):
        torch.manual_seed(0)
        model = build_model("small_cnn", 1, 3, width=4, dropout=0.0)
        config = tr.TrainConfig(epochs=8, batch_size=16, seed=0, class_weights=setting)
        pred = predict_proba(tr.fit_model(model, x, y, norm, config), x_test, norm).argmax(1)
        recall[setting] = (pred[y_test == 2] == 2).mean()
        balanced[setting] = np.mean([(pred[y_test == c] == c).mean() for c in range(3)])
    assert recall["auto"] > 0 and balanced["auto"] > 0.6
    assert recall["auto"] > recall[False]


def test_warmup_then_cosine() -> None:
    f = [tr.warmup_cosine(s, 10, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[9:], f[10:], strict=False))
    assert f[-1] < 0.01


def test_shards_are_contiguous_and_unpadded() -> None:
    for n in (0, 1, 7, 10):
        for world in (1, 2, 3):
            bounds = [shard_bounds(n, world, r) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))


def test_dropped_rows_are_train_rows_with_is_dropped() -> None:
    index = pd.DataFrame({"image_id": ["a", "b", "c"]})
    issues = pd.DataFrame(
        {"image_id": ["a", "b", "c"], "split": ["train", "val", "train"], "is_dropped": [True, True, False]}
    )
    assert tr.dropped_mask(index, issues).tolist() == [True, False, False]
    assert tr.dropped_mask(index, None).tolist() == [False, False, False]


# ----------------------------------------------------------------------------- checkpoints


class _Exploit:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['PWNED_PATH'], 'w').write('pwned')",))


def test_malicious_checkpoint_is_refused_without_running_code(tmp_path, monkeypatch) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED_PATH", str(marker))
    path = tmp_path / "model.pt"
    torch.save({"format": 1, "state_dict": {}, "payload": _Exploit()}, path)
    # Plain pickle would run the payload; torch.load(weights_only=True) must refuse it.
    with pytest.raises(ValueError, match="refused"):
        Checkpoint.load(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # proof that the file really is malicious
    assert marker.read_text() == "pwned"


def test_checkpoint_round_trip(tmp_path) -> None:
    model = build_model("small_cnn", 1, 3, width=4).eval()
    norm = fit_normalizer([_images(6)[0]], mode="scale01", max_value=255, channels=1)
    spec = ModelSpec("small_cnn", in_channels=1, n_classes=3, width=4, dropout=0.2)
    record = {"epoch": 3, "val_loss": 0.5, "seconds": 1.25}
    ckpt = Checkpoint.of(model, spec, CLASSES, norm, params={"seed": 1}, record=record)
    ckpt.save(tmp_path / "m" / "model.pt")
    loaded = Checkpoint.load(tmp_path / "m" / "model.pt")
    assert loaded.classes == CLASSES and loaded.epoch == 3 and loaded.normalizer == norm
    # wall-clock time is not a property of the weights: the same run writes the same bytes
    assert loaded.val_metrics == {"epoch": 3.0, "val_loss": 0.5}
    rebuilt = loaded.build_model()
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(rebuilt(x), model(x))
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["model.pt"]  # no temp file left


# ----------------------------------------------------------------------------- stages


def _processed_dir(tmp_path: Path) -> Path:
    """A tiny data/processed folder as the normalize stage writes it."""
    out = tmp_path / "processed"
    out.mkdir()
    for split, n in (("train", 48), ("val", 12), ("test", 24)):
        x, y = _images(n, seed={"train": 0, "val": 1, "test": 2}[split])
        patients = [f"{split}_p{i // 2:02d}" for i in range(n)]
        index = pd.DataFrame(
            {
                "image_id": [f"images/{p}/img_{i:03d}.png" for i, p in enumerate(patients)],
                "label": [CLASSES[k] for k in y],
                "patient_id": patients,
                "group_id": patients,
                "label_index": y,
            }
        )
        np.save(out / f"{split}.npy", x)
        index.to_parquet(out / f"{split}.parquet", index=False)
    _write_normalizer(np.load(out / "train.npy"), out / "normalizer.json")
    write_json(
        {"classes": CLASSES, "channels": 1, "image_size": 16, "dtype": "uint8", "max_value": 255},
        out / "meta.json",
    )
    return out


def _params(tmp_path: Path, **train) -> Path:
    raw = default_params()
    raw["model"].update(width=4)
    raw["train"].update(dict(epochs=3, batch_size=16, device="cpu", patience=2), **train)
    raw["evaluate"].update(n_bootstrap=50)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    load_params(path)
    return path


def _policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.json"
    write_json(policy_to_dict(build_policy(AugmentParams(), channels=1, image_shape=(16, 16))), path)
    return path


def _evaluate_args(tmp_path: Path, params: Path, processed: Path) -> list[str]:
    return [
        "--params", str(params), "--processed", str(processed), "--model", str(tmp_path / "models/model.pt"),
        "--metrics", str(tmp_path / "metrics/test.json"), "--plots", str(tmp_path / "plots"),
        "--predictions", str(tmp_path / "reports/predictions.csv"),
    ]  # fmt: skip


def _train_args(tmp_path: Path, params: Path, processed: Path, issues: Path) -> list[str]:
    return [
        "--params", str(params), "--processed", str(processed), "--policy", str(_policy(tmp_path)),
        "--label-issues", str(issues), "--model", str(tmp_path / "models/model.pt"),
        "--live", str(tmp_path / "dvclive"), "--metrics", str(tmp_path / "metrics/train.json"),
    ]  # fmt: skip


def test_train_then_evaluate_stages_on_tiny_data(tmp_path) -> None:
    from stages import evaluate as evaluate_stage
    from stages import train as train_stage

    processed = _processed_dir(tmp_path)
    params = _params(tmp_path)
    train_ids = pd.read_parquet(processed / "train.parquet")["image_id"]
    issues = tmp_path / "label_issues.parquet"
    pd.DataFrame({"image_id": train_ids[:3], "split": "train", "is_dropped": [True, True, False]}).to_parquet(
        issues
    )

    assert train_stage.main(_train_args(tmp_path, params, processed, issues)) == 0
    train_metrics = json.loads((tmp_path / "metrics/train.json").read_text())
    assert train_metrics["n_train"] == 46 and train_metrics["n_dropped"] == 2
    assert train_metrics["device"] == "cpu" and 0 <= train_metrics["best_epoch"] < 3
    for name in ("train_loss", "val_loss", "val_balanced_accuracy"):
        curve = pd.read_csv(tmp_path / f"dvclive/plots/metrics/{name}.tsv", sep="\t")
        assert list(curve.columns[:2]) == ["step", name] and len(curve) == train_metrics["epochs_run"]
    assert not (tmp_path / "dvc.yaml").exists() and not (tmp_path / "dvclive/dvc.yaml").exists()

    assert evaluate_stage.main(_evaluate_args(tmp_path, params, processed)) == 0
    test = json.loads((tmp_path / "metrics/test.json").read_text())
    keys = ["accuracy", "balanced_accuracy", "macro_f1", "auroc", "pr_auc", "cohen_kappa", "mcc", "ece"]
    assert set(test) == {*keys, "per_class", "patient_level", "calibration"}
    calibration = test["calibration"]
    assert calibration["fitted_on"] == "val" and calibration["n_val"] == 12
    assert calibration["temperature"] > 0 and calibration["ece_after"] == pytest.approx(test["ece"]["value"])
    assert set(test["patient_level"]) == set(keys) and set(test["per_class"]) == set(CLASSES)
    assert set(test["accuracy"]) == {"value", "ci_low", "ci_high"}
    preds = pd.read_csv(tmp_path / "reports/predictions.csv")
    assert list(preds.columns[:3]) == ["image_id", "patient_id", "label"] and len(preds) == 24
    assert {f"prob_{c}" for c in CLASSES} <= set(preds.columns)
    assert list(pd.read_csv(tmp_path / "plots/confusion.csv").columns) == ["actual", "predicted"]
    assert list(pd.read_csv(tmp_path / "plots/roc.csv").columns) == ["fpr", "tpr", "class"]
    assert list(pd.read_csv(tmp_path / "plots/calibration.csv").columns)[:2] == [
        "mean_predicted",
        "fraction_positive",
    ]


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun"
)
def test_train_stage_under_torchrun_with_two_gloo_processes(tmp_path) -> None:
    processed = _processed_dir(tmp_path)
    params = _params(tmp_path, epochs=2)
    torchrun = str(Path(sys.executable).parent / "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "stages.train",
           *_train_args(tmp_path, params, processed, tmp_path / "absent.parquet")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics/train.json").read_text())
    assert metrics["world_size"] == 2 and metrics["n_train"] == 48 and metrics["n_val"] == 12
    assert Checkpoint.load(tmp_path / "models/model.pt").classes == CLASSES


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_linear_probe_trains_the_classifier_only(tmp_path) -> None:
    x, y = _images(24)
    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 3, width=4, dropout=0.0)
    before = _snapshot(model)
    config = tr.TrainConfig(epochs=2, batch_size=8, finetune="linear_probe")
    after = _snapshot(tr.fit_model(model, x, y, _normalizer(tmp_path, x), config, val_images=x, val_labels=y))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # weights, BatchNorm affine parameters and running statistics of the backbone are all kept
    assert changed == {"classifier.weight", "classifier.bias"}


def test_freeze_then_unfreeze_and_backbone_learning_rate(tmp_path) -> None:
    x, y = _images(24)
    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 3, width=4, dropout=0.0)
    config = tr.TrainConfig(
        epochs=3, batch_size=8, finetune="freeze_then_unfreeze", freeze_epochs=2, backbone_lr_scale=0.1,
        warmup_epochs=0,
    )  # fmt: skip
    groups = tr.param_groups(model, config)
    head = tr.head_parameters(model)
    assert {g["lr"] for g in groups if id(g["params"][0]) in head} == {config.lr}
    assert [g["lr"] for g in groups if id(g["params"][0]) not in head] == pytest.approx([config.lr * 0.1] * 2)
    snapshots = []
    tr.fit_model(
        model, x, y, _normalizer(tmp_path, x), config, val_images=x, val_labels=y,
        on_epoch_end=lambda r: snapshots.append(_snapshot(model)),
    )  # fmt: skip
    conv = "features.0.0.weight"
    assert torch.equal(snapshots[0][conv], snapshots[1][conv])  # frozen for 2 epochs
    assert not torch.equal(snapshots[1][conv], snapshots[2][conv])  # then trained
    assert not torch.equal(snapshots[0]["classifier.weight"], snapshots[1]["classifier.weight"])


def test_timm_backbone_with_pretrained_statistics_through_train_and_evaluate(tmp_path) -> None:
    """A timm arch, a local "pretrained" file, the backbone's statistics and a frozen start, through
    the train and evaluate stages: evaluate predicts with the checkpoint's (pretrained) normalizer."""
    import timm

    from stages import evaluate as evaluate_stage
    from stages import train as train_stage

    torch.manual_seed(1)
    weights = tmp_path / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), weights)
    processed = _processed_dir(tmp_path)
    params = _params(tmp_path, finetune="freeze_then_unfreeze", freeze_epochs=1, backbone_lr_scale=0.1)
    raw = yaml.safe_load(params.read_text())
    raw["model"].update(arch="test_resnet", weights_path=str(weights), input_stats="pretrained")
    params.write_text(yaml.safe_dump(raw))
    assert train_stage.main(_train_args(tmp_path, params, processed, tmp_path / "none.parquet")) == 0
    ckpt = Checkpoint.load(tmp_path / "models/model.pt")
    assert ckpt.spec.arch == "test_resnet" and ckpt.normalizer.fitted_on == "pretrained:test_resnet"
    assert evaluate_stage.main(_evaluate_args(tmp_path, params, processed)) == 0
    assert json.loads((tmp_path / "metrics/test.json").read_text())["accuracy"]["value"] is not None
