"""How well a model version separates its positive class: metrics, an operating threshold, a report.

- ``operating_threshold``: the decision threshold for a target sensitivity, chosen on
  calibration data (a triage tool must not miss disease, so sensitivity is fixed first).
- ``threshold_for_specificity``: the lowest threshold that keeps a target share of
  negatives below it (the urgent threshold's operating point).
- ``sensitivity_lower_bound``, ``paired_auc_difference_bound``,
  ``paired_specificity_difference_bound``: one-sided confidence bounds the promotion
  gate decides on (scipy's exact binomial interval and paired bootstrap).
- ``evaluate_scores``: AUC, accuracy at 0.5 (the published benchmarks' convention) and
  sensitivity, specificity and accuracy at the operating threshold.
- ``evaluate_version``: a registered version on a data split, fed through the version's
  own preprocessing, at the version's own threshold.
- ``write_report``: ROC curve, calibration plot, confusion matrix (and training curves)
  as PNG, with a Markdown report that embeds them.
- ``run_evaluate``: what ``medimg evaluate`` runs; prints a table, optionally writes JSON.

Labels here are binary: 1 = the model's positive class, 0 = any other class. A score
is the positive class's probability; "positive" means ``score >= threshold``, the
rule the serving path applies (``ModelMetadata.decide``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from scipy import stats
from sklearn.calibration import calibration_curve
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix, roc_auc_score, roc_curve

from batch_training import datasets
from streaming.modeling.loading import LoadedModel, load_model
from streaming.modeling.registry import ModelRegistry

logger = logging.getLogger(__name__)

BENCHMARK_THRESHOLD = 0.5
DEFAULT_TARGET_SENSITIVITY = 0.95
JSON_KEYS = ("auc", "accuracy_at_0_5", "threshold", "sensitivity", "specificity", "accuracy",
             "n")
REPORT_FILE = "report.md"
ROC_FILE = "roc_curve.png"
CALIBRATION_FILE = "calibration.png"
CONFUSION_FILE = "confusion_matrix.png"
TRAINING_CURVES_FILE = "training_curves.png"


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """Metrics of one model on one labeled set.

    ``auc``: ROC AUC of the positive scores. ``accuracy_at_0_5``: accuracy with
    positive = score >= 0.5. ``threshold``: the operating threshold the next fields
    are measured at: ``sensitivity`` (tp / positives), ``specificity`` (tn / negatives),
    ``accuracy`` and the confusion counts ``tn, fp, fn, tp``. ``n``: images.
    """
    auc: float
    accuracy_at_0_5: float
    threshold: float
    sensitivity: float
    specificity: float
    accuracy: float
    n: int
    tn: int
    fp: int
    fn: int
    tp: int
    positive_class: str

    def to_dict(self) -> dict:
        """The JSON form: ``JSON_KEYS``, the confusion counts and the positive class."""
        return dataclasses.asdict(self)


# -- metrics -----------------------------------------------------------------------------

def _binary_inputs(labels, positive_scores) -> tuple[np.ndarray, np.ndarray]:
    """Validated (labels int 0/1, scores float64), both present, same length."""
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(positive_scores, dtype=np.float64).reshape(-1)
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels but {len(scores)} scores")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (other class) or 1 (positive class)")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    present = set(np.unique(labels).tolist())
    if present != {0, 1}:
        missing = "positive" if 1 not in present else "negative"
        raise ValueError(f"the data holds no {missing} images; sensitivity, specificity and "
                         "AUC need both positive and negative examples")
    return labels.astype(np.int64), scores


def operating_threshold(labels, positive_scores,
                        target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY) -> float:
    """The highest threshold whose sensitivity on this (calibration) data reaches the target.

    ``labels``: 1 = positive class, 0 = other; ``positive_scores``: the positive class's
    score per image. Sensitivity at threshold t is the share of positives with
    score >= t, so the answer is always one of the positive images' scores.

    Ties: images with equal scores fall on the same side of any threshold, so a tie at
    the chosen score counts all of them as positive; the sensitivity reached can
    then exceed the target by more than one image's share. A higher threshold would
    drop the whole tied group and fall below the target.
    """
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
    labels, scores = _binary_inputs(labels, positive_scores)
    # Every distinct score is a candidate (no intermediate points dropped); thresholds
    # come in decreasing order with sensitivity (tpr) non-decreasing.
    _, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    first_reaching = int(np.argmax(tpr >= target_sensitivity - 1e-12))
    return float(thresholds[first_reaching])


def threshold_for_specificity(labels, positive_scores, target_specificity: float) -> float:
    """The lowest threshold whose specificity on this (calibration) data reaches the target.

    Specificity at t is the share of negatives scoring below t. The answer is one of
    the scores (or 1.0 when only a threshold above every score would do), so a
    positive finding at or above it is as rare among negatives as the target says.
    """
    if not 0.0 < target_specificity < 1.0:
        raise ValueError(f"target_specificity must be in (0, 1), got {target_specificity}")
    labels, scores = _binary_inputs(labels, positive_scores)
    fpr, _, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    # thresholds decrease and fpr grows with them; the last one within the budget is lowest.
    within = np.flatnonzero(fpr <= 1.0 - target_specificity + 1e-12)
    return float(min(1.0, thresholds[within[-1]]))


def sensitivity_lower_bound(true_positives: int, positives: int,
                            confidence: float = 0.95) -> float:
    """One-sided lower confidence bound of a sensitivity of ``true_positives / positives``.

    Clopper-Pearson (exact): conservative, the usual choice for a diagnostic claim.
    The lower end of a two-sided interval at ``2 * confidence - 1`` is the one-sided bound.
    """
    if positives < 1:
        raise ValueError("no positive images: sensitivity is undefined")
    interval = stats.binomtest(int(true_positives), int(positives)).proportion_ci(
        confidence_level=2 * confidence - 1, method="exact")
    return float(interval.low)


def _auc_by_ranks(labels: np.ndarray, scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """ROC AUC along ``axis`` (the Mann-Whitney U over n1 * n0; ties count one half),
    equal to ``roc_auc_score`` and vectorized over bootstrap resamples."""
    labels = np.asarray(labels, dtype=np.float64)
    ranks = stats.rankdata(scores, axis=axis)
    positives = labels.sum(axis=axis)
    negatives = labels.shape[axis] - positives
    rank_sum = (ranks * labels).sum(axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def paired_auc_difference_bound(labels, candidate_scores, reference_scores, *,
                                confidence: float = 0.95, resamples: int = 2000,
                                seed: int = 0) -> tuple[float, float]:
    """(AUC difference candidate - reference, its one-sided lower confidence bound).

    Paired bootstrap (scipy.stats.bootstrap, ``paired=True``): both models' scores of
    the same images are resampled together, so what the images have in common cancels.
    """
    labels, candidate = _binary_inputs(labels, candidate_scores)
    _, reference = _binary_inputs(labels, reference_scores)

    def difference(y, a, b, axis=-1):
        return _auc_by_ranks(y, a, axis) - _auc_by_ranks(y, b, axis)

    observed = float(difference(labels, candidate, reference))
    result = stats.bootstrap((labels, candidate, reference), difference, paired=True,
                             vectorized=True, n_resamples=resamples, confidence_level=confidence,
                             alternative="greater", method="percentile",
                             random_state=np.random.default_rng(seed))
    return observed, float(result.confidence_interval.low)


def paired_specificity_difference_bound(labels, candidate_scores, candidate_threshold: float,
                                        reference_scores, reference_threshold: float, *,
                                        confidence: float = 0.95, resamples: int = 2000,
                                        seed: int = 0) -> tuple[float, float]:
    """(specificity difference candidate - reference, each at its own threshold, and its
    one-sided lower confidence bound), by a paired bootstrap over the same negatives."""
    labels, candidate = _binary_inputs(labels, candidate_scores)
    _, reference = _binary_inputs(labels, reference_scores)
    negatives = labels == 0
    # Per negative image: +1 only the candidate clears it, -1 only the reference does.
    change = ((candidate[negatives] < candidate_threshold).astype(np.float64)
              - (reference[negatives] < reference_threshold).astype(np.float64))
    observed = float(change.mean())
    if np.all(change == change[0]):
        return observed, observed  # no spread to resample: the difference is exact
    result = stats.bootstrap((change,), np.mean, vectorized=True, n_resamples=resamples,
                             confidence_level=confidence, alternative="greater",
                             method="percentile", random_state=np.random.default_rng(seed))
    return observed, float(result.confidence_interval.low)


def evaluate_scores(labels, positive_scores, threshold: float,
                    positive_class: str) -> EvaluationResult:
    """Metrics of ``positive_scores`` against ``labels`` (1 = ``positive_class``).

    Sensitivity, specificity, accuracy and the counts are at ``threshold``; AUC and
    accuracy at 0.5 do not depend on it.
    """
    labels, scores = _binary_inputs(labels, positive_scores)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(
        labels, (scores >= threshold).astype(np.int64), labels=[0, 1]).ravel())
    at_half = (scores >= BENCHMARK_THRESHOLD).astype(np.int64)
    return EvaluationResult(
        auc=float(roc_auc_score(labels, scores)),
        accuracy_at_0_5=float(np.mean(at_half == labels)),
        threshold=float(threshold),
        sensitivity=tp / (tp + fn), specificity=tn / (tn + fp),
        accuracy=(tp + tn) / len(labels), n=int(len(labels)),
        tn=tn, fp=fp, fn=fn, tp=tp, positive_class=positive_class)


def positive_scores(loaded: LoadedModel, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The positive class's score per image, float32 (N,).

    ``images``: already preprocessed for this model (``metadata.preprocessing``),
    shape (N, height, width, channels); scored in batches of ``batch_size``.
    """
    column = loaded.metadata.classes.index(loaded.metadata.positive_class)
    scores = [loaded.predict(images[start:start + batch_size])[:, column]
              for start in range(0, len(images), batch_size)]
    return np.concatenate(scores) if scores else np.empty((0,), dtype=np.float32)


# -- a registered version on a data split ------------------------------------------------

def names_for_unnamed_npz(data: str | Path, model_classes: Sequence[str]):
    """The model's classes for an npz that stores no class names, else None.

    Such a file's labels are indices into whatever names training was given, which
    the model's metadata recorded: the convention ``medimg train --class_names`` uses.
    """
    data = Path(data)
    if not (data.is_file() and data.suffix == ".npz"):
        return None
    with np.load(data, allow_pickle=False) as arrays:
        return None if "class_names" in arrays.files else tuple(model_classes)


def binary_labels(split: datasets.LabeledSplit, model_classes: Sequence[str],
                  positive_class: str) -> np.ndarray:
    """1 where an image's class is the model's ``positive_class``, else 0.

    The data's classes must be the model's classes (in any order); they are matched
    by name, so a dataset listing them in another order is still read correctly.
    """
    if sorted(split.classes) != sorted(model_classes):
        raise ValueError(f"the data's classes {list(split.classes)} differ from the model's "
                         f"{list(model_classes)}; evaluate on data labeled with the model's "
                         "classes (or name the data's classes with class_names)")
    return (np.asarray(split.classes)[split.labels] == positive_class).astype(np.int64)


def evaluate_version(model_registry: str, model_name: str, version: str | None, data: str,
                     split: str = "val", *, class_names: Sequence[str] | None = None,
                     labels_csv: str | None = None, with_images: bool = False) -> tuple:
    """Evaluate one registered version (production when ``version`` is None) on ``split``.

    See ``evaluate_loaded``; this loads the version first.
    """
    registry = ModelRegistry(model_registry)
    loaded = load_model(registry, model_name, registry.resolve(model_name, version))
    return evaluate_loaded(loaded, data, split, class_names=class_names,
                           labels_csv=labels_csv, with_images=with_images)


def evaluate_loaded(loaded: LoadedModel, data: str, split: str = "val", *,
                    class_names: Sequence[str] | None = None, labels_csv: str | None = None,
                    with_images: bool = False) -> tuple:
    """Evaluate a loaded model on ``split`` of ``data`` (npz, folder, or a DICOM folder
    with ``labels_csv``).

    The data is preprocessed with the version's own ``metadata.preprocessing`` and
    scored at its own ``metadata.threshold``. ``class_names`` name the data's classes
    in label order; by default a folder's class folders, an npz's stored
    ``class_names``, or for an npz without them the model's own classes. Returns
    (result, binary labels (N,), positive scores (N,)) so callers can draw the report
    from the same numbers, and with ``with_images`` also the preprocessed images
    (N, H, W, C) that were scored.
    """
    metadata = loaded.metadata
    if class_names is None and labels_csv is None:
        class_names = names_for_unnamed_npz(data, metadata.classes)
    labeled = datasets.load_split(data, metadata.preprocessing, split, class_names,
                                  labels_csv=labels_csv)
    labels = binary_labels(labeled, metadata.classes, metadata.positive_class)
    scores = positive_scores(loaded, labeled.images)
    logger.info("evaluated %s on %d images of %s (%s)", metadata.model_id, len(labels), data,
                split)
    result = evaluate_scores(labels, scores, metadata.threshold, metadata.positive_class)
    if with_images:
        return result, labels, scores, labeled.images
    return result, labels, scores


# -- report --------------------------------------------------------------------------------

def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def plot_roc(result: EvaluationResult, labels: np.ndarray, scores: np.ndarray,
             path: Path) -> Path:
    """ROC curve with the operating point marked."""
    fpr, tpr, _ = roc_curve(labels, scores)
    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    axes.plot(fpr, tpr, label=f"AUC {result.auc:.3f}")
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    axes.plot(1 - result.specificity, result.sensitivity, "o", color="crimson",
              label=f"threshold {result.threshold:.3f}")
    axes.set(xlabel="1 - specificity (false positive rate)",
             ylabel="sensitivity (true positive rate)", title="ROC curve",
             xlim=(0, 1), ylim=(0, 1.02))
    axes.legend(loc="lower right")
    return _save(figure, path)


def plot_calibration(labels: np.ndarray, scores: np.ndarray, path: Path,
                     n_bins: int = 10) -> Path:
    """Reliability diagram: observed share of positives against the mean score per bin."""
    observed, predicted = calibration_curve(labels, np.clip(scores, 0.0, 1.0), n_bins=n_bins)
    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfectly calibrated")
    axes.plot(predicted, observed, "o-", label="model")
    axes.set(xlabel="mean positive score", ylabel="share of positives",
             title=f"Calibration ({n_bins} bins)", xlim=(0, 1), ylim=(0, 1))
    axes.legend(loc="upper left")
    return _save(figure, path)


def plot_confusion(result: EvaluationResult, path: Path) -> Path:
    """Confusion matrix at the operating threshold."""
    figure = Figure(figsize=(4.5, 4))
    axes = figure.subplots()
    matrix = np.array([[result.tn, result.fp], [result.fn, result.tp]])
    labels = [f"not {result.positive_class}", result.positive_class]
    ConfusionMatrixDisplay(matrix, display_labels=labels).plot(ax=axes, colorbar=False,
                                                               values_format="d")
    axes.set_title(f"At threshold {result.threshold:.3f}")
    return _save(figure, path)


def plot_training_curves(history: Mapping[str, Sequence[float]], path: Path) -> Path:
    """Loss and each metric per epoch, training and validation side by side."""
    names = [key for key in history if not key.startswith("val_") and key != "learning_rate"]
    figure = Figure(figsize=(4 * len(names), 3.5))
    for axes, name in zip(np.atleast_1d(figure.subplots(1, len(names))), names):
        epochs = np.arange(1, len(history[name]) + 1)
        axes.plot(epochs, history[name], label="training")
        if f"val_{name}" in history:
            axes.plot(epochs, history[f"val_{name}"], label="validation")
        axes.set(xlabel="epoch", title=name)
        axes.legend()
    return _save(figure, path)


def _metric_rows(result: EvaluationResult) -> list[tuple[str, str]]:
    return [("AUC", f"{result.auc:.4f}"),
            ("accuracy at 0.5", f"{result.accuracy_at_0_5:.4f}"),
            ("threshold", f"{result.threshold:.4f}"),
            ("sensitivity at threshold", f"{result.sensitivity:.4f}"),
            ("specificity at threshold", f"{result.specificity:.4f}"),
            ("accuracy at threshold", f"{result.accuracy:.4f}"),
            ("images", str(result.n)),
            ("TP / FN / FP / TN", f"{result.tp} / {result.fn} / {result.fp} / {result.tn}")]


def write_report(result: EvaluationResult, labels: np.ndarray, scores: np.ndarray,
                 out_dir: str | Path, *, title: str,
                 history: Mapping[str, Sequence[float]] | None = None) -> dict[str, Path]:
    """Write the plots and ``report.md`` into ``out_dir``; returns {file name: path}.

    ``labels``/``scores``: what ``result`` was computed from. ``history``: a Keras
    ``History.history`` dict, drawn as training curves when given.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {ROC_FILE: plot_roc(result, labels, scores, out_dir / ROC_FILE),
               CALIBRATION_FILE: plot_calibration(labels, scores, out_dir / CALIBRATION_FILE),
               CONFUSION_FILE: plot_confusion(result, out_dir / CONFUSION_FILE)}
    if history:
        written[TRAINING_CURVES_FILE] = plot_training_curves(
            history, out_dir / TRAINING_CURVES_FILE)
    positives = int(labels.sum())
    sections = [
        f"# {title}", "",
        f"{result.n} images: {positives} {result.positive_class}, "
        f"{result.n - positives} other. "
        f"Positive means a {result.positive_class} score at or above the threshold.", "",
        "| metric | value |", "|---|---|",
        *(f"| {name} | {value} |" for name, value in _metric_rows(result)), "",
        f"![ROC curve]({ROC_FILE})", f"![Calibration]({CALIBRATION_FILE})",
        f"![Confusion matrix]({CONFUSION_FILE})",
    ]
    if TRAINING_CURVES_FILE in written:
        sections += ["", "## Training", "", f"![Training curves]({TRAINING_CURVES_FILE})"]
    report = out_dir / REPORT_FILE
    report.write_text("\n".join(sections) + "\n")
    written[REPORT_FILE] = report
    return written


# -- command line ------------------------------------------------------------------------

def format_table(result: EvaluationResult) -> str:
    """The metrics as aligned plain text, one per line, for a terminal or a log."""
    rows = _metric_rows(result)
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def run_evaluate(model_registry: str, model_name: str, version: str | None, data: str,
                 split: str = "val", json_path: str | None = None,
                 report_dir: str | None = None, *,
                 class_names: Sequence[str] | None = None,
                 labels_csv: str | None = None) -> EvaluationResult:
    """``medimg evaluate``: evaluate, print the table, and write JSON and a report on request.

    ``json_path``: write ``EvaluationResult.to_dict()`` there (keys ``JSON_KEYS`` plus
    the confusion counts, the model and the data). ``report_dir``: write the plots and
    ``report.md`` there. Raises ValueError or ``RegistryError`` with a message to show.
    """
    # Resolved once, so the version printed is the one evaluated even if production moves.
    resolved = ModelRegistry(model_registry).resolve(model_name, version)
    result, labels, scores = evaluate_version(model_registry, model_name, resolved, data,
                                              split, class_names=class_names,
                                              labels_csv=labels_csv)
    print(f"{model_name}/{resolved} on {data} ({split} split)")
    print(format_table(result))
    if json_path:
        document = {**result.to_dict(), "model": f"{model_name}/{resolved}", "data": str(data),
                    "split": split}
        Path(json_path).write_text(json.dumps(document, indent=2) + "\n")
    if report_dir:
        write_report(result, labels, scores, report_dir,
                     title=f"{model_name}/{resolved} on {Path(data).name} ({split})")
    return result
