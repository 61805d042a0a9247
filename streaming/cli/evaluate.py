"""``medimg evaluate``: a registered model's metrics on labeled data."""

from __future__ import annotations

from streaming.cli.common import CliError


def add_parser(commands) -> None:
    """Register the command and its options."""
    evaluate = commands.add_parser("evaluate", help="evaluate a registered model on labeled data")
    evaluate.add_argument("--model_registry", required=True)
    evaluate.add_argument("--model_name", default="pneumonia-cnn")
    evaluate.add_argument("--model", default=None, help="version (default: production)")
    evaluate.add_argument("--data", required=True,
                          help="an .npz, a <split>/<class>/ folder, or a DICOM folder with "
                               "--labels_csv")
    evaluate.add_argument("--labels_csv", default=None,
                          help="CSV with columns path,label[,split] labeling --data's files")
    evaluate.add_argument("--split", default="val",
                          help="which split: <split>_images/_labels of an .npz, or the "
                               "<split>/ folder (default: %(default)s)")
    evaluate.add_argument("--json", default=None, help="write the metrics here as JSON")
    evaluate.add_argument("--report", default=None,
                          help="write ROC, calibration and confusion plots and report.md here")
    evaluate.add_argument("--class_names", default=None,
                          help="comma-separated names for label 0, 1, ... of an .npz")
    evaluate.set_defaults(run=run)


def run(args) -> int:
    from batch_training.evaluation import run_evaluate  # noqa: PLC0415
    from streaming.modeling.loading import ModelRefused  # noqa: PLC0415
    from streaming.modeling.registry import RegistryError  # noqa: PLC0415
    try:
        run_evaluate(args.model_registry, args.model_name, args.model, args.data, args.split,
                     json_path=args.json, report_dir=args.report,
                     class_names=args.class_names.split(",") if args.class_names else None,
                     labels_csv=args.labels_csv)
    except (FileNotFoundError, RegistryError, ModelRefused, ValueError) as error:
        raise CliError(str(error)) from None
    return 0
