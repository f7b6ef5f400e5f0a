"""``cad-node train`` and ``cad-node evaluate`` (the main group imports them when they run)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from cad_node.errors import CadNodeError
from cad_node.training import datasets as dsets
from cad_node.training.architectures import ALL_ARCHITECTURES, ARCHITECTURES

if TYPE_CHECKING:
    from cad_node.training.train import TrainConfig

log = logging.getLogger(__name__)
Command = Callable[..., Any]
Decorator = Callable[[Command], Command]

_PATH = click.Path(path_type=Path)
_EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("cad_node").setLevel(logging.INFO if verbose else logging.WARNING)


def _architectures(value: str) -> tuple[str, ...]:
    names = tuple(a.strip() for a in value.split(",") if a.strip())
    unknown = [a for a in names if a not in ALL_ARCHITECTURES]
    if unknown or not names:
        raise click.BadParameter(f"unknown {unknown}; choose from {', '.join(ALL_ARCHITECTURES)}")
    return names


@dataclass(frozen=True)
class TrainRun:
    """What one ``cad-node train`` does: the training settings, the data and the outputs."""

    config: TrainConfig
    labels: Path
    images_root: Path | None
    layout: dsets.Layout
    max_images: int | None
    benchmark: bool = False
    out_dir: Path | None = None
    export_name: str | None = None
    export_architecture: str | None = None
    model_version: str = "0.1.0"
    models_dir: Path = Path("models")
    threads: int | None = None
    verbose: bool = False

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TrainRun:
        """The run that the ``train`` command's options (by parameter name) ask for."""
        from cad_node.training import train as T

        settings: dict[str, Any] = {name: options[name] for name in _CONFIG_OPTIONS}
        settings |= {
            "architectures": _architectures(options["architectures"]),
            "lesions_csv": options["lesions"],
            "patch_epochs": options["patch_epochs"] or 0,
            "progress": not options["no_progress"],
        }
        settings |= {k: options[k] for k in _DEFAULTED_OPTIONS if options[k] is not None}
        config = T.fast_config(**settings) if options["fast"] else T.TrainConfig(**settings)
        export_architecture = options["export_architecture"]
        if export_architecture and export_architecture.removesuffix("+other") not in (
            config.architectures
        ):
            raise click.UsageError(
                f"--export-architecture {export_architecture} is not among --architectures; "
                "only a cross-validated architecture can be exported"
            )
        max_images = options["max_images"]
        return cls(
            config=config,
            labels=options["labels"],
            images_root=options["images_root"],
            layout=cast(dsets.Layout, options["layout"]),
            max_images=16 if options["fast"] and max_images is None else max_images,
            benchmark=options["benchmark"],
            out_dir=options["out_dir"],
            export_name=options["export_name"],
            export_architecture=export_architecture,
            model_version=options["model_version"],
            models_dir=options["models_dir"],
            threads=options["threads"],
            verbose=options["verbose"],
        )


_CONFIG_OPTIONS = (
    "task", "lr", "seed", "pretrained", "head_epochs", "tail_stages", "bn_train", "repeats",
    "feature_cache", "lesion_head", "lesion_channel", "variants", "mirror_tta", "heads",
    "fine_features",
)  # fmt: skip
"""Options that are TrainConfig fields of the same name."""
_DEFAULTED_OPTIONS = ("image_size", "epochs", "folds", "batch_size", "n_boot")
"""TrainConfig fields whose option, when not given, leaves the (``--fast``) default."""


def _train(**options: Any) -> None:
    """Cross-validate architectures on the same patient folds; optionally export the best.

    Writes comparison.csv/.md, roc.png, confusion_<arch>.png, oof_predictions.csv and
    summary.json to --out-dir. --fast is a smoke test (64 px, 1 epoch, 2 folds, tiny models).
    """
    run_training(TrainRun.from_options(options))


def run_training(run: TrainRun) -> None:
    """Cross-validate (or only time, with ``benchmark``) and export as ``run`` says."""
    import torch

    from cad_node.training import train as T

    _setup_logging(run.verbose)
    if run.threads:
        torch.set_num_threads(run.threads)
    cfg = run.config
    try:
        samples = dsets.load_samples(run.labels, run.images_root, run.layout)
        if run.max_images is not None and run.max_images < len(samples):
            samples = dsets.subsample_by_patient(samples, run.max_images, cfg.task, cfg.seed)
        if run.benchmark:
            timings = T.time_epochs(samples, cfg)
            for arch, t in timings.items():
                size = "lite0 input" if arch.startswith("lite0") else f"{cfg.image_size} px"
                click.echo(
                    f"{arch}: {t['seconds']:.1f} s/epoch ({len(samples)} images, "
                    f"{size}, {int(t['parameters']):,} parameters)"
                )
            return
        out_dir = run.out_dir
        if out_dir is None:
            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            out_dir = Path("var") / "training" / f"{cfg.task}-{stamp}"
        comparison = T.run_comparison(samples, cfg, out_dir)
        click.echo(comparison.table, nl=False)
        click.echo(f"reports written to {out_dir}")
        if run.export_name:
            folder = T.export_best(
                comparison,
                name=run.export_name,
                version=run.model_version,
                models_dir=run.models_dir,
                labels_csv=run.labels,
                architecture=run.export_architecture,
                command=_command_line(),
            )
            click.echo(f"model folder written to {folder}")
    except CadNodeError as exc:
        raise click.ClickException(str(exc)) from exc


def _with_options(options: list[Decorator], func: Command) -> Command:
    """Apply click option decorators in reading order."""
    for option in reversed(options):
        func = option(func)
    return func


TRAIN_OPTIONS: list[Decorator] = [
    click.option("--labels", required=True, type=_EXISTING_FILE, help="Labels CSV."),
    click.option("--images-root", type=_EXISTING_DIR, help="Image paths are relative to this."),
    click.option(
        "--layout",
        type=click.Choice(dsets.LAYOUTS),
        default="auto",
        show_default=True,
        help="Labels layout (auto-detected from the CSV header).",
    ),
    click.option("--task", type=click.Choice(dsets.TASKS), default="malignant", show_default=True),
    click.option(
        "--architectures",
        default=",".join(ARCHITECTURES),
        show_default=True,
        help="Comma-separated architectures to compare on the same folds "
        "(also: patchmax, a max over tiles scored by a light patch classifier).",
    ),
    click.option("--image-size", type=int, help="Input size in pixels [256; --fast 64]."),
    click.option(
        "--epochs", type=int, help="Whole-image epochs per fold [20; --fast 1]; 0 = patches only."
    ),
    click.option("--folds", type=int, help="Patient-level folds [5; --fast 2]."),
    click.option("--batch-size", type=int, help="[16; --fast 8]"),
    click.option("--lr", type=float, default=1e-3, show_default=True),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option("--max-images", type=int, help="Keep about this many images (whole patients)."),
    click.option(
        "--fast", is_flag=True, help="Smoke test: 16 images, 64 px, 1 epoch, 2 folds, tiny models."
    ),
    click.option(
        "--pretrained", type=_EXISTING_FILE, help="DenseNet121 weights (else from scratch)."
    ),
    click.option(
        "--lesions",
        type=_EXISTING_FILE,
        help="mias_abnormalities.csv: lesion targets of lite0-lesion (and FROC); with "
        "--patch-epochs, the whole-image models pretrain on lesion patches first.",
    ),
    click.option(
        "--patch-epochs", type=int, help="Whole-image models: patch pretraining epochs [0]."
    ),
    click.option("--bootstrap", "n_boot", type=int, help="Bootstrap draws [1000; --fast 100]."),
    click.option(
        "--head-epochs", type=int, help="lite0-lesion: lesion-head epochs per fit [30; --fast 2]."
    ),
    click.option(
        "--tail-stages",
        type=click.IntRange(0, 2),
        default=0,
        show_default=True,
        help="lite0-lesion: after the head, unfreeze this many of the deepest backbone stages, "
        "one at a time, each at a lower learning rate (0 = frozen backbone).",
    ),
    click.option(
        "--bn-train", is_flag=True, help="lite0-lesion: unfrozen stages update batch-norm stats."
    ),
    click.option(
        "--repeats",
        type=click.IntRange(1, 20),
        default=1,
        show_default=True,
        help="lite0-lesion: repeat the cross-validation with other training seeds (spread).",
    ),
    click.option(
        "--feature-cache",
        type=_PATH,
        default=Path("var/cache/features"),
        show_default=True,
        help="Where the frozen EfficientNet-Lite0 features are cached between runs.",
    ),
    click.option(
        "--lesion-head",
        type=click.Choice(["conv", "linear"]),
        default="conv",
        show_default=True,
        help="lite0-lesion: a 3x3 convolutional head, or a per-cell linear one.",
    ),
    click.option(
        "--lesion-channel",
        type=click.Choice(["task", "abnormal"]),
        default="abnormal",
        show_default=True,
        help="lite0-lesion: the map that scores a film: the task's own, or the "
        "any-abnormality map (more training lesions) also for the malignant task.",
    ),
    click.option(
        "--variants",
        type=click.IntRange(1, 4),
        help="lite0-lesion: cached training variants of each film: 1 the film, 2 + its "
        "mirror, 4 + gamma/rotation/zoom versions of both [4; --fast 1].",
    ),
    click.option(
        "--mirror-tta",
        is_flag=True,
        help="lite0-lesion: score each film as the mean of its maps and its top-bottom "
        "mirror's (test-time augmentation; needs --variants 2 or more).",
    ),
    click.option(
        "--heads",
        type=click.IntRange(1, 8),
        default=1,
        show_default=True,
        help="lite0-lesion: lesion heads per fit, trained with other seeds, maps averaged "
        "(an ensemble; training time grows with it).",
    ),
    click.option(
        "--fine-features",
        is_flag=True,
        help="lite0-lesion: the head also reads the stride-8 features (40 channels, "
        "max-pooled to the stride-16 map), for calcification-scale detail.",
    ),
    click.option("--threads", type=int, help="torch CPU threads."),
    click.option("--out-dir", type=_PATH, help="Reports folder [var/training/TASK-TIME]."),
    click.option(
        "--export-name", help="Retrain the best architecture on all images; write MODELS_DIR/NAME."
    ),
    click.option(
        "--export-architecture",
        type=click.Choice([*ALL_ARCHITECTURES, "lite0-lesion+other"]),
        help="Export this architecture instead of the best one (lite0-lesion+other: the "
        "lesion model whose breast score uses the other breast).",
    ),
    click.option("--model-version", default="0.1.0", show_default=True),
    click.option("--models-dir", type=_PATH, default=Path("models"), show_default=True),
    click.option("--benchmark", is_flag=True, help="Only time one epoch per architecture."),
    click.option("--no-progress", is_flag=True, help="No tqdm progress bars."),
    click.option("-v", "--verbose", is_flag=True, help="Log progress at INFO level."),
]

train_command = click.command("train")(_with_options(TRAIN_OPTIONS, _train))


def _evaluate(
    model: Path | None,
    labels: Path,
    images_root: Path | None,
    layout: str,
    task: str,
    threshold: float | None,
    lesions: Path | None,
    n_boot: int,
    as_json: bool,
    no_progress: bool,
    verbose: bool,
) -> None:
    """Evaluate a model folder on a labelled data set (AUC with a patient-bootstrap 95% CI)."""
    from cad_node.training.evaluate import evaluate_model_folder

    _setup_logging(verbose)
    try:
        result = evaluate_model_folder(
            model,
            labels,
            images_root=images_root,
            task=cast(dsets.Task, task),
            layout=cast(dsets.Layout, layout),
            threshold=threshold,
            lesions_csv=lesions,
            n_boot=n_boot,
            progress=not no_progress,
        )
    except CadNodeError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(result))
        return
    lo, hi = result["auc_ci95"]
    auc = "n/a" if result["auc"] is None else f"{result['auc']:.3f}"
    ci = "n/a" if lo is None else f"{lo:.3f}-{hi:.3f}"
    click.echo(f"{result['model']} on {result['n']} images ({result['n_positive']} positive)")
    click.echo(f"AUC {auc} (95% CI {ci})")
    for key in ("accuracy", "sensitivity", "specificity", "precision", "f1"):
        click.echo(f"{key}: {result[key]:.3f} at threshold {result['threshold']:.3f}")
    if "froc" in result:
        froc = result["froc"]
        pairs = ", ".join(
            f"{s:.2f} at {f:g}"
            for f, s in zip(froc["fp_per_image"], froc["sensitivity"], strict=True)
        )
        click.echo(f"FROC over {froc['n_lesions']} lesions (sensitivity at FP/image): {pairs}")


EVALUATE_OPTIONS: list[Decorator] = [
    click.option(
        "--model", type=_EXISTING_DIR, help="Model folder [the installed default, models/DEFAULT]."
    ),
    click.option("--labels", required=True, type=_EXISTING_FILE, help="Labels CSV."),
    click.option("--images-root", type=_EXISTING_DIR, help="Image paths are relative to this."),
    click.option("--layout", type=click.Choice(dsets.LAYOUTS), default="auto", show_default=True),
    click.option("--task", type=click.Choice(dsets.TASKS), default="malignant", show_default=True),
    click.option("--threshold", type=float, help="Override the manifest's operating point."),
    click.option(
        "--lesions",
        type=_EXISTING_FILE,
        help="mias_abnormalities.csv: add the FROC of a lesion model's detections.",
    ),
    click.option("--bootstrap", "n_boot", type=int, default=1000, show_default=True),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON object."),
    click.option("--no-progress", is_flag=True, help="No tqdm progress bars."),
    click.option("-v", "--verbose", is_flag=True, help="Log at INFO level."),
]

evaluate_command = click.command("evaluate")(_with_options(EVALUATE_OPTIONS, _evaluate))


def _command_line() -> str:
    """``cad-node train`` with the options given on this run (those not left at their default)."""
    import shlex

    from click.core import ParameterSource

    ctx = click.get_current_context()
    words = ["cad-node", ctx.info_name or "train"]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name is None:
            continue
        if ctx.get_parameter_source(param.name) in (ParameterSource.DEFAULT, None):
            continue
        value = ctx.params[param.name]
        flag = max(param.opts, key=len)
        if param.is_flag:
            if value:
                words.append(flag)
        elif value is not None:
            words += [flag, ",".join(value) if isinstance(value, tuple) else str(value)]
    return shlex.join(words)


if __name__ == "__main__":  # pragma: no cover - `python -m cad_node.training.cli train ...`
    click.Group(commands=[train_command, evaluate_command])()
