"""``medimg train``: the retraining recipe (preprocess, train, evaluate, gate)."""

from __future__ import annotations

import json

from streaming.cli.common import CliError


def add_parser(commands) -> None:
    """Register the command and its options."""
    train = commands.add_parser(
        "train", help="train, evaluate and gate a model; promote it if it earns it",
        description="The full recipe: the Beam preprocessing pipeline, training, "
                    "evaluation and the promotion gate (the nightly DAG runs the same). "
                    "Exit status 1 when the gate rejects the new version.")
    train.add_argument("--data", required=True,
                       help="a MedMNIST-style .npz, a folder <split>/<class>/*.png|jpg|dcm, "
                            "or a DICOM folder with --labels_csv")
    train.add_argument("--labels_csv", default=None,
                       help="CSV with path,label[,split] for a folder of DICOM files")
    train.add_argument("--model_registry", required=True, help="registry folder or URI")
    train.add_argument("--model_name", default="pneumonia-cnn")
    train.add_argument("--architecture", default="compact_cnn",
                       choices=("compact_cnn", "residual_net", "resnet50"))
    train.add_argument("--input_size", default="28", help="28 or HEIGHTxWIDTH (default: 28)")
    train.add_argument("--channels", type=int, choices=(1, 3), default=1)
    train.add_argument("--epochs", type=int, default=None,
                       help="most epochs (early stopping on validation AUC may end sooner)")
    train.add_argument("--batch_size", type=int, default=None)
    train.add_argument("--seed", type=int, default=1234)
    train.add_argument("--modalities", default="CR,DX",
                       help="modalities the model applies to (default: %(default)s)")
    train.add_argument("--body_parts", default="CHEST",
                       help="body parts it applies to; empty for any (default: %(default)s)")
    train.add_argument("--class_names", default=None,
                       help="comma-separated names for label 0, 1, ... of an .npz")
    train.add_argument("--target_sensitivity", type=float, default=0.95,
                       help="the gate's sensitivity target at the chosen threshold")
    train.add_argument("--auc_tolerance", type=float, default=0.01,
                       help="how far below production's AUC a new version may be")
    train.set_defaults(run=run)


def run(args) -> int:
    import dataclasses  # noqa: PLC0415
    from batch_training.promotion import GatePolicy  # noqa: PLC0415
    from batch_training.recipe import parse_input_size, run_recipe  # noqa: PLC0415
    from batch_training.train import TrainingConfig  # noqa: PLC0415
    from streaming.modeling.registry import RegistryError  # noqa: PLC0415
    try:
        height, width = parse_input_size(args.input_size)
    except ValueError as error:
        raise CliError(f"--input_size: {error}") from None
    given = {name: getattr(args, name) for name in ("epochs", "batch_size")
             if getattr(args, name) is not None}
    try:
        config = TrainingConfig(
            data=args.data, model_registry=args.model_registry, model_name=args.model_name,
            architecture=args.architecture, height=height, width=width,
            channels=args.channels, seed=args.seed,
            modalities=tuple(args.modalities.split(",")),
            body_parts=tuple(p for p in args.body_parts.split(",") if p),
            class_names=tuple(args.class_names.split(",")) if args.class_names else None,
            target_sensitivity=args.target_sensitivity, promote="never", **given)
        policy = dataclasses.replace(GatePolicy(), target_sensitivity=args.target_sensitivity,
                                     auc_tolerance=args.auc_tolerance)
        decision = run_recipe(config, labels_csv=args.labels_csv, policy=policy)
    except (FileNotFoundError, RegistryError, ValueError) as error:
        raise CliError(str(error)) from None
    print(json.dumps(decision.to_dict(), indent=2))
    return 0 if decision.promoted else 1
