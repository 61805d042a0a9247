"""The default training recipe on PneumoniaMNIST: ``python -m bench.train_bench``.

Runs exactly what ``medimg train`` runs (the Beam preprocessing pipeline, then
training with the ``TrainingConfig`` defaults: compact CNN, 28x28, augmentation,
no class weights, fitting / calibration / holdout roles in the training split, early
stopping on validation AUC, then the promotion gate on the holdout) on
``pneumoniamnist_trainval.npz`` into a temporary registry, evaluates the registered
version on the validation split with ``batch_training.evaluation.evaluate_version``,
prints AUC, accuracy at 0.5, sensitivity and specificity at the operating threshold
on validation and on the gate's holdout (with the sensitivity's lower bound), the
thresholds, the training wall time and epochs, and writes ``bench/results/train.json``.

The official test split is held out for acceptance measurements. Validation chose
the epoch, so it runs above test; the holdout is the figure to believe here.

``--set KEY=VALUE`` overrides one ``TrainingConfig`` field (repeatable), for trying a
recipe change before making it the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from streaming.local.reference_data import PNEUMONIAMNIST, pneumoniamnist_path, shared_data_dir

# The file stores no class names; its README: label 0 = normal, 1 = pneumonia.
# Evaluation reads such a file's labels in the model's class order.
CLASS_NAMES = ("normal", "pneumonia")
RESULTS = Path(__file__).resolve().parent / "results" / "train.json"
TRAINING_BUDGET_S = 600.0
# Stretch targets of the issue (stated for the held-out test split; checked here on val).
TARGETS = {"auc": 0.97, "accuracy_at_0_5": 0.92, "sensitivity": 0.95}
# MedMNIST v2 (Yang et al., Scientific Data 2023), PneumoniaMNIST test split.
PUBLISHED_TEST = {"ResNet-18 (28)": {"auc": 0.944, "accuracy": 0.854},
                  "ResNet-50 (224)": {"auc": 0.962, "accuracy": 0.884},
                  "AutoML Vision": {"auc": 0.991, "accuracy": 0.946}}


def _overrides(pairs: list[str], config_type) -> dict:
    """``KEY=VALUE`` strings -> TrainingConfig fields, each VALUE parsed as JSON if it can be."""
    fields = {field.name for field in dataclasses.fields(config_type)}
    overrides = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        if key not in fields:
            raise SystemExit(f"--set {pair}: {key!r} is not a TrainingConfig field")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        overrides[key] = tuple(value) if isinstance(value, list) else value
    return overrides


def run(data: Path, overrides: dict) -> dict:
    """``medimg train``'s recipe (Beam preprocessing, training, gate) into a temporary
    registry, then evaluation on val; returns the results."""
    from batch_training.evaluation import evaluate_scores, evaluate_version  # noqa: PLC0415
    from batch_training.recipe import run_recipe  # noqa: PLC0415
    from batch_training.train import TrainingConfig  # noqa: PLC0415
    from streaming.modeling.registry import ModelRegistry  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="medimg-train-bench-") as registry:
        config = TrainingConfig(data=str(data), model_registry=registry,
                                **{"class_names": CLASS_NAMES, **overrides})
        started = time.monotonic()
        decision = run_recipe(config)
        train_seconds = time.monotonic() - started
        record = ModelRegistry(registry).metadata(config.model_name, decision.version)
        result, labels, scores = evaluate_version(registry, record.name, record.version,
                                                  str(data), split="val")
    # Sensitivity and specificity at 0.5 too: the benchmarks' accuracy at 0.5 on a test
    # split with more normal images than val leans on specificity at 0.5.
    at_half = evaluate_scores(labels, scores, 0.5, result.positive_class)
    training = record.extra["training"]
    # Where this machine keeps things is no part of the result.
    recipe = {key: value for key, value in training["config"].items()
              if key not in ("data", "model_registry")}
    checks = {name: getattr(result, name) >= floor for name, floor in TARGETS.items()}
    checks["train_wall_s"] = train_seconds <= TRAINING_BUDGET_S
    return {
        "dataset": PNEUMONIAMNIST, "split": "val",
        "gate": {"promoted": decision.promoted, "reason": decision.reason},
        "holdout": decision.candidate,
        "urgent": (record.extra["metrics"].get("calibration") or {}).get("urgent"),
        "urgent_threshold": record.urgent_threshold,
        "note": "test split held out; validation runs well above test on this dataset",
        "validation": result.to_dict(),
        "validation_at_0_5": {"sensitivity": at_half.sensitivity,
                              "specificity": at_half.specificity,
                              "balanced_accuracy": (at_half.sensitivity
                                                    + at_half.specificity) / 2},
        "train_wall_s": round(train_seconds, 1),
        "fit_s": training["fit_seconds"],
        "epochs_trained": training["epochs_trained"], "best_epoch": training["best_epoch"],
        "train_images": training["train_images"],
        "calibration_images": training["calibration_images"],
        "holdout_images": training.get("holdout_images"),
        "config": recipe,
        "targets_on_validation": {**TARGETS, "train_wall_s": TRAINING_BUDGET_S},
        "targets_met_on_validation": checks,
        "published_test_reference": PUBLISHED_TEST,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "keras_backend": record.extra.get("keras_backend")},
    }


def _describe_urgent(urgent: dict | None) -> str:
    if not urgent:
        return "configured"
    if urgent.get("threshold") is None:
        return urgent["reason"]
    return (f"specificity {urgent['specificity']:.4f} for a target of "
            f"{urgent['target_specificity']} on {urgent['negatives']} calibration negatives")


def report(results: dict) -> str:
    """The figures to read, one per line, and whether each stretch target holds on val."""
    v, half, config = results["validation"], results["validation_at_0_5"], results["config"]
    h = results["holdout"] or {}
    lines = [
        "PneumoniaMNIST, default medimg train recipe, VALIDATION split "
        "(the test split is held out; val runs above test on this set)",
        f"  AUC                       {v['auc']:.4f}",
        f"  accuracy at 0.5           {v['accuracy_at_0_5']:.4f}  (sensitivity "
        f"{half['sensitivity']:.4f}, specificity {half['specificity']:.4f} at 0.5)",
        f"  operating threshold       {v['threshold']:.4f}  (calibration split, target "
        f"sensitivity {config['target_sensitivity']} + margin {config['sensitivity_margin']})",
        f"  sensitivity at threshold  {v['sensitivity']:.4f}",
        f"  specificity at threshold  {v['specificity']:.4f}",
        f"  holdout (the gate's)      AUC {h.get('auc', float('nan')):.4f}, sensitivity "
        f"{h.get('sensitivity', float('nan')):.4f} (95% lower bound "
        f"{h.get('sensitivity_lower_bound', float('nan')):.4f}), specificity "
        f"{h.get('specificity', float('nan')):.4f} on {h.get('n', 0)} images",
        f"  urgent threshold          {results['urgent_threshold']:.4f}  "
        f"({_describe_urgent(results['urgent'])})",
        f"  gate                      {'promoted' if results['gate']['promoted'] else 'REJECTED'}: "
        f"{results['gate']['reason']}",
        f"  recipe wall time          {results['train_wall_s']:.1f} s "
        f"(fit {results['fit_s']:.1f} s) on {results['machine']['cpus']} CPUs",
        f"  epochs                    {results['epochs_trained']} (best {results['best_epoch']})",
        "Stretch targets, checked on validation only:",
    ]
    for name, met in results["targets_met_on_validation"].items():
        floor = results["targets_on_validation"][name]
        relation = "<=" if name == "train_wall_s" else ">="
        lines.append(f"  {name} {relation} {floor}: {'yes' if met else 'NO'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one TrainingConfig field (repeatable)")
    parser.add_argument("--out", default=str(RESULTS), help="results JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    data = pneumoniamnist_path()
    if data is None:
        print(f"train_bench: {shared_data_dir() / PNEUMONIAMNIST} is absent. PneumoniaMNIST is "
              "not shipped with the repository; set MEDIMG_SHARED_DATA to the folder that "
              f"holds {PNEUMONIAMNIST}.", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from batch_training.train import TrainingConfig  # noqa: PLC0415
    results = run(data, _overrides(args.set, TrainingConfig))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
