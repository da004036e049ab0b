"""Hyperparameter search with Optuna, scored on the validation split only.

Each trial draws values from ``tune.space`` with the TPE sampler (seeded), writes them into a copy
of the params (:func:`with_tuned`) and trains exactly as the train stage does
(same seed, initial weights, augmentation, dropped label issues, epochs and early stopping), so the
best trial's validation score is what ``train`` gets with ``train.use_tuned: true``. A median
pruner stops a trial whose monitored validation metric is below the median of earlier trials at
the same epoch. The first trial is the values ``params.yaml`` already has (when they lie in the
space), so the search can only report something at least as good as the untuned default.

The test split is never read here.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import InputError
from pipeline.params import TUNABLE, Params, SearchDim, parse_params
from pipeline.processed import Normalizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingData:
    """What one training run needs, read once for all trials (arrays may be memmaps)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    n_classes: int
    normalizer: Normalizer
    policy: Any  # the albumentations policy of the augment stage (or None)


def with_tuned(params: Params, values: dict[str, float], source: str = "tuned values") -> Params:
    """``params`` with tuned hyperparameters (:data:`TUNABLE` names) written into their sections.

    Raises:
        InputError: An unknown name, or a value the section refuses (e.g. dropout 1.2).
    """
    unknown = sorted(set(values) - set(TUNABLE))
    if unknown:
        raise InputError(f"{source}: unknown hyperparameter(s) {unknown}; expected some of {sorted(TUNABLE)}")
    raw = params.model_dump(mode="json")
    for name, value in values.items():
        section, kind = TUNABLE[name]
        raw[section][name] = kind(value)
    try:
        return parse_params(raw, source)
    except ValueError as err:
        raise InputError(str(err)) from err


def suggest(trial: Any, space: dict[str, SearchDim]) -> dict[str, float]:
    """Draw one value per dimension of ``space`` (integers for integer hyperparameters)."""
    values: dict[str, float] = {}
    for name, dim in space.items():
        is_int = TUNABLE[name][1] is int
        if dim.choices is not None:
            choices = [int(c) for c in dim.choices] if is_int else list(dim.choices)
            values[name] = trial.suggest_categorical(name, choices)
        elif is_int:
            values[name] = trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log)
        else:
            values[name] = trial.suggest_float(name, dim.low, dim.high, log=dim.log)
    return values


def baseline(params: Params, space: dict[str, SearchDim]) -> dict[str, float] | None:
    """The values ``params`` already has for the searched names, or None if one lies outside the space."""
    values = {name: getattr(getattr(params, TUNABLE[name][0]), name) for name in space}
    for name, value in values.items():
        dim = space[name]
        inside = value in dim.choices if dim.choices is not None else dim.low <= value <= dim.high
        if not inside:
            log.info("tune: params.yaml's %s=%s is outside the search space; no baseline trial", name, value)
            return None
    return values


def train_and_score(
    params: Params,
    data: TrainingData,
    device: Any,
    on_epoch_end: Any = None,
) -> float:
    """Train as the train stage does with ``params``; return the best validation ``train.monitor``.

    Args:
        params: Full params (already with the trial's values).
        data: The training and validation data.
        device: torch device.
        on_epoch_end: Called with each epoch record (the pruner hooks in here; it may raise).

    Returns:
        The monitored metric of the kept (best) epoch, NaN when never defined.
    """
    import torch

    from pipeline.augment import AugmentedDataset
    from pipeline.models import build_model
    from pipeline.train import TrainConfig, fit_model

    m = params.model
    torch.manual_seed(params.seed)  # initial weights, as in stages/train.py
    model = build_model(
        m.arch, data.train_images.shape[3], data.n_classes, m.width, m.dropout, m.weights_path
    )
    dataset = AugmentedDataset(data.train_images, data.train_labels, data.policy, params.seed)
    config = TrainConfig.from_params(params)
    best: dict[str, float] = {}
    fit_model(
        model, data.train_images, data.train_labels, data.normalizer, config,
        val_images=data.val_images, val_labels=data.val_labels, dataset=dataset, device=device,
        on_epoch_end=on_epoch_end, on_best=lambda record, state: best.update(record),
    )  # fmt: skip
    return float(best.get(config.monitor, math.nan))


def run_search(params: Params, data: TrainingData, device: Any) -> tuple[dict, pd.DataFrame]:
    """The Optuna study: ``tune.n_trials`` trials (TPE, median pruner), seeded by ``seed``.

    Returns:
        ``(best, trials)``: ``best`` is what ``models/tune/best.json`` holds (``values``,
        ``value``, ``monitor``, ``direction``, ``trial``, ``n_trials``, ``epochs``); ``trials`` has
        one row per trial: ``trial, state, value, best_value`` and the drawn values.

    Raises:
        InputError: No validation images (trials are scored on val only).
    """
    t = params.tune
    monitor = params.train.monitor
    direction = "minimize" if monitor == "val_loss" else "maximize"
    epochs = t.epochs or params.train.epochs
    empty = {"values": {}, "value": None, "monitor": monitor, "direction": direction, "trial": None,
             "n_trials": 0, "epochs": epochs}  # fmt: skip
    if t.n_trials == 0:
        return empty, pd.DataFrame(columns=["trial", "state", "value", "best_value"])
    if len(data.val_labels) == 0:
        raise InputError("tune: the validation split is empty; trials are scored on val (split.val_fraction)")

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=params.seed),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=t.n_startup_trials, n_warmup_steps=t.prune_after_epochs
        ),
    )
    start = baseline(params, t.space)
    if start is not None:
        study.enqueue_trial(start)

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, t.space)
        trial_params = with_tuned(params, values, source=f"tune trial {trial.number}")
        trial_params = trial_params.model_copy(
            update={"train": trial_params.train.model_copy(update={"epochs": epochs})}
        )

        def report(record: dict[str, float]) -> None:
            value = record.get(monitor, math.nan)
            if math.isfinite(value):
                trial.report(value, int(record["epoch"]))
                if trial.should_prune():
                    raise optuna.TrialPruned(f"epoch {int(record['epoch']) + 1}: {monitor}={value:.4f}")

        t0 = time.perf_counter()
        score = train_and_score(trial_params, data, device, on_epoch_end=report)
        log.info("tune trial %d: %s=%.4f %s (%.0f s)", trial.number, monitor, score, values,
                 time.perf_counter() - t0)  # fmt: skip
        return score

    study.optimize(objective, n_trials=t.n_trials, catch=())
    trials = trial_table(study)
    complete = [tr for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE]
    if not complete or all(not math.isfinite(tr.value) for tr in complete):
        log.warning("tune: no trial completed with a finite %s; nothing tuned", monitor)
        return {**empty, "n_trials": len(study.trials)}, trials
    best = study.best_trial
    return {
        "values": dict(best.params),
        "value": float(best.value),
        "monitor": monitor,
        "direction": direction,
        "trial": best.number,
        "n_trials": len(study.trials),
        "epochs": epochs,
    }, trials


def trial_table(study: Any) -> pd.DataFrame:
    """One row per trial: number, state, value, running best of complete trials, drawn values.

    A pruned trial's value is its last reported (intermediate) validation value (Optuna's), kept for the plot;
    only complete trials count towards the best.
    """
    rows = []
    best = math.nan
    sign = -1.0 if study.direction.name == "MINIMIZE" else 1.0
    for tr in study.trials:
        value = float(tr.value) if tr.value is not None else math.nan
        is_complete = tr.state.name == "COMPLETE"
        if is_complete and math.isfinite(value) and (not math.isfinite(best) or sign * value > sign * best):
            best = value
        rows.append({"trial": tr.number, "state": tr.state.name.lower(), "value": value, "best_value": best,
                     **tr.params})  # fmt: skip
    return pd.DataFrame(rows)


def summarize(best: dict, trials: pd.DataFrame, seconds: float) -> dict:
    """``metrics/tune.json``: counts by state, the baseline (trial 0 = params.yaml) and best scores."""
    states = trials["state"].value_counts().to_dict() if len(trials) else {}

    def num(x: Any) -> float | None:
        return None if x is None or not math.isfinite(float(x)) else round(float(x), 6)

    first = trials.iloc[0] if len(trials) else None
    return {
        "n_trials": int(len(trials)),
        "n_complete": int(states.get("complete", 0)),
        "n_pruned": int(states.get("pruned", 0)),
        "monitor": best["monitor"],
        "epochs_per_trial": best["epochs"],
        "baseline_value": num(first["value"]) if first is not None else None,
        "best_value": num(best["value"]),
        "best_trial": best["trial"],
        "best_values": best["values"],
        "seconds": round(seconds, 2),
    }


def read_tuned(best: dict, source: str) -> dict[str, float]:
    """The tuned values from ``best.json`` for ``train.use_tuned``.

    Raises:
        InputError: The file holds no values (``tune.n_trials`` was 0 or nothing completed).
    """
    values = best.get("values") or {}
    if not values:
        raise InputError(
            f"{source}: train.use_tuned is true but the tune stage found no values "
            f"({best.get('n_trials', 0)} trials); set tune.n_trials > 0 or train.use_tuned: false"
        )
    return values
