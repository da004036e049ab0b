"""The tune stage: trials scored on val only (the test split is not even present), the baseline trial
is params.yaml, the best is at least the baseline, and train.use_tuned reproduces the best score."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_train import _params, _processed_dir, _train_args

from pipeline.errors import InputError
from pipeline.params import Params, TuneParams, load_params
from pipeline.tune import with_tuned
from stages import train as train_stage
from stages import tune as tune_stage
from tests.helpers import default_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tune_params(tmp_path: Path, n_trials: int, **train) -> Path:
    path = _params(tmp_path, **train)
    raw = yaml.safe_load(path.read_text())
    raw["tune"].update(n_trials=n_trials, prune_after_epochs=1, n_startup_trials=1)
    raw["tune"]["space"] = {
        "lr": {"low": 1e-4, "high": 3e-2, "log": True},
        "batch_size": {"choices": [8, 16]},
    }
    path.write_text(yaml.safe_dump(raw))
    load_params(path)
    return path


def _tune_args(tmp_path: Path, params: Path, processed: Path, policy: Path) -> list[str]:
    return [
        "--params", str(params), "--processed", str(processed), "--policy", str(policy),
        "--label-issues", str(tmp_path / "no_issues.parquet"), "--best", str(tmp_path / "models/tune/best.json"),
        "--metrics", str(tmp_path / "metrics/tune.json"), "--trials", str(tmp_path / "plots/tune_trials.csv"),
    ]  # fmt: skip


def test_tune_scores_on_val_and_use_tuned_reproduces_the_best(tmp_path) -> None:
    processed = _processed_dir(tmp_path)
    for name in ("test.npy", "test.parquet"):  # trials must never need the test split
        (processed / name).unlink()
    params = _tune_params(tmp_path, n_trials=3, epochs=3)
    train_args = _train_args(tmp_path, params, processed, tmp_path / "no_issues.parquet")
    policy = Path(train_args[train_args.index("--policy") + 1])
    assert tune_stage.main(_tune_args(tmp_path, params, processed, policy)) == 0

    best = json.loads((tmp_path / "models/tune/best.json").read_text())
    metrics = json.loads((tmp_path / "metrics/tune.json").read_text())
    trials = pd.read_csv(tmp_path / "plots/tune_trials.csv")
    assert metrics["n_trials"] == 3 == len(trials) and set(best["values"]) == {"lr", "batch_size"}
    # trial 0 is params.yaml's values (lr 0.002, batch_size 16), the untuned default
    assert trials.loc[0, "lr"] == pytest.approx(0.002) and trials.loc[0, "batch_size"] == 16
    assert trials.loc[0, "state"] == "complete" and metrics["baseline_value"] == pytest.approx(
        trials.loc[0, "value"]
    )
    complete = trials[trials["state"] == "complete"]
    assert best["value"] >= metrics["baseline_value"] and best["value"] == complete["value"].max()
    assert trials["best_value"].is_monotonic_increasing

    # train with the tuned values gets the best trial's validation score, bit for bit on the CPU
    raw = yaml.safe_load(params.read_text())
    raw["train"]["use_tuned"] = True
    params.write_text(yaml.safe_dump(raw))
    args = [*train_args, "--tuned", str(tmp_path / "models/tune/best.json")]
    assert train_stage.main(args) == 0
    trained = json.loads((tmp_path / "metrics/train.json").read_text())
    assert trained["val_balanced_accuracy"] == pytest.approx(best["value"], abs=1e-6)


def test_no_trials_writes_nothing_tuned_and_use_tuned_then_fails(tmp_path) -> None:
    processed = _processed_dir(tmp_path)
    params = _tune_params(tmp_path, n_trials=0, use_tuned=True)
    train_args = _train_args(tmp_path, params, processed, tmp_path / "no_issues.parquet")
    policy = Path(train_args[train_args.index("--policy") + 1])
    assert tune_stage.main(_tune_args(tmp_path, params, processed, policy)) == 0
    assert json.loads((tmp_path / "models/tune/best.json").read_text())["values"] == {}
    with pytest.raises(InputError, match="train.use_tuned is true but the tune stage found no values"):
        train_stage.main([*train_args, "--tuned", str(tmp_path / "models/tune/best.json")])


def test_search_space_and_tuned_values_are_validated() -> None:
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['momentum'\]"):
        TuneParams(space={"momentum": {"low": 0.8, "high": 0.99}})
    with pytest.raises(ValueError, match="low <= high"):
        TuneParams(space={"lr": {"low": 0.1, "high": 0.01}})
    with pytest.raises(ValueError, match="log range needs low > 0"):
        TuneParams(space={"dropout": {"low": 0.0, "high": 0.5, "log": True}})
    params = Params.model_validate(default_params())
    tuned = with_tuned(params, {"lr": 0.01, "batch_size": 64.0, "dropout": 0.3, "mixup_alpha": 0.1})
    assert (tuned.train.lr, tuned.train.batch_size, tuned.model.dropout, tuned.augment.mixup_alpha) == (
        0.01, 64, 0.3, 0.1,
    )  # fmt: skip
    with pytest.raises(InputError, match="model.dropout"):
        with_tuned(params, {"dropout": 1.5})
