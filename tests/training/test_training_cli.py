"""``train --fast`` and ``evaluate --json`` on a handful of real mini-MIAS films."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cad_node.model_folder import load_model_folder
from cad_node.training.cli import TrainRun, evaluate_command, train_command

EVAL_KEYS = {
    "n", "auc", "auc_ci95", "accuracy", "sensitivity", "specificity", "precision", "f1",
    "threshold",
}  # fmt: skip


@pytest.fixture(scope="module")
def trained(
    mias_dir: Path, mias_subset_csv: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Result, Path, Path]:
    work = tmp_path_factory.mktemp("train")
    result = CliRunner().invoke(
        train_command,
        [
            "--labels", str(mias_subset_csv),
            "--images-root", str(mias_dir),
            "--fast",
            "--lesions", str(mias_dir / "mias_abnormalities.csv"),
            "--patch-epochs", "1",
            "--feature-cache", str(work / "features"),
            "--out-dir", str(work / "report"),
            "--export-name", "smoke",
            "--export-architecture", "light",
            "--models-dir", str(work / "models"),
            "--no-progress",
        ],
    )  # fmt: skip
    return result, work / "report", work / "models" / "smoke"


def test_train_fast_writes_table_and_model(trained: tuple[Result, Path, Path]) -> None:
    result, report, model_dir = trained
    assert result.exit_code == 0, result.output
    for arch in ("baseline", "light", "densenet121", "resnet50"):
        assert f"| {arch} |" in result.output
        assert (report / f"confusion_{arch}.png").is_file()
    for row in ("lite0-lesion", "lite0-lesion+other", "lite0-global", "lite0-global+other"):
        assert f"| {row} |" in result.output
    for name in ("comparison.csv", "comparison.md", "roc.png", "oof_predictions.csv"):
        assert (report / name).is_file()
    manifest = load_model_folder(model_dir)[1].to_dict()  # validated, as written
    assert manifest["smoke_test"] is True
    assert manifest["input"] == {"spacing_mm": 3.2, "size": [64, 64], "channels": 1}
    assert "auc" in manifest["metrics"]["cross_validated"]
    assert manifest["training"]["command"].startswith("cad-node ")
    card = (model_dir / "MODEL_CARD.md").read_text()
    assert "## Reproduce" in card and "--export-name smoke" in card
    assert "Per-fold AUC:" in card


def test_evaluate_json(
    trained: tuple[Result, Path, Path], mias_dir: Path, mias_subset_csv: Path
) -> None:
    _, _, model_dir = trained
    result = CliRunner().invoke(
        evaluate_command,
        [
            "--model", str(model_dir),
            "--labels", str(mias_subset_csv),
            "--images-root", str(mias_dir),
            "--task", "malignant",
            "--bootstrap", "50",
            "--json",
            "--no-progress",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(payload) >= EVAL_KEYS
    assert payload["n"] == 12 and len(payload["auc_ci95"]) == 2


def test_evaluate_refuses_tampered_model(
    trained: tuple[Result, Path, Path], tmp_path: Path, mias_dir: Path, mias_subset_csv: Path
) -> None:
    _, _, model_dir = trained
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in model_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    data = bytearray((copy / "weights.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "weights.safetensors").write_bytes(bytes(data))
    result = CliRunner().invoke(
        evaluate_command,
        ["--model", str(copy), "--labels", str(mias_subset_csv), "--images-root", str(mias_dir)],
    )
    assert result.exit_code != 0 and "checksum" in result.output


def test_train_refuses_to_export_an_architecture_it_does_not_compare(
    mias_subset_csv: Path,
) -> None:
    result = CliRunner().invoke(
        train_command,
        ["--labels", str(mias_subset_csv), "--fast", "--architectures", "light",
         "--export-name", "x", "--export-architecture", "densenet121"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "not among --architectures" in result.output


def test_train_options_become_one_frozen_run(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("refnum\n")
    args = [
        "--labels", str(labels), "--fast", "--epochs", "3", "--architectures", "light",
        "--lesions", str(labels), "--no-progress", "--out-dir", str(tmp_path / "out"),
    ]  # fmt: skip
    run = TrainRun.from_options(train_command.make_context("train", [*args]).params)
    assert (run.labels, run.max_images, run.out_dir) == (labels, 16, tmp_path / "out")
    cfg = run.config
    assert (cfg.fast, cfg.epochs, cfg.image_size, cfg.folds) == (True, 3, 64, 2)
    assert (cfg.architectures, cfg.lesions_csv, cfg.progress) == (("light",), labels, False)
    slow = TrainRun.from_options(train_command.make_context("train", args[:2]).params)
    assert (slow.max_images, slow.config.image_size, slow.config.progress) == (None, 256, True)
    with pytest.raises(AttributeError):
        run.labels = tmp_path  # type: ignore[misc]


def test_train_rejects_unknown_architecture(mias_subset_csv: Path) -> None:
    result = CliRunner().invoke(
        train_command, ["--labels", str(mias_subset_csv), "--architectures", "vgg", "--fast"]
    )
    assert result.exit_code != 0 and "unknown" in result.output


@pytest.fixture(scope="module")
def trained_lesion(
    mias_dir: Path, mias_1024_subset_csv: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Result, Path, Path]:
    work = tmp_path_factory.mktemp("train-lesion")
    result = CliRunner().invoke(
        train_command,
        [
            "--labels", str(mias_1024_subset_csv),
            "--images-root", str(mias_dir),
            "--fast",
            "--architectures", "lite0-lesion,lite0-global",
            "--lesions", str(mias_dir / "mias_abnormalities.csv"),
            "--feature-cache", str(work / "features"),
            "--out-dir", str(work / "report"),
            "--export-name", "lesion-smoke",
            "--export-architecture", "lite0-lesion+other",
            "--models-dir", str(work / "models"),
            "--fine-features",  # the stride-8 branch, through export and evaluate
            "--no-progress",
        ],
    )  # fmt: skip
    return result, work / "report", work / "models" / "lesion-smoke"


def test_train_lesion_model_exports_map_and_combiner(
    trained_lesion: tuple[Result, Path, Path],
) -> None:
    result, report, model_dir = trained_lesion
    assert result.exit_code == 0, result.output
    summary = json.loads((report / "summary.json").read_text())
    froc = summary["results"]["lite0-lesion"]["froc"]
    assert froc["fp_per_image"] == [0.25, 0.5, 1.0, 2.0, 4.0] and len(froc["sensitivity"]) == 5
    assert froc["n_lesions"] == 3  # malignant findings with a centre among the 12 films
    manifest = load_model_folder(model_dir)[1].to_dict()  # validated, as written
    assert manifest["architecture"] == "lite0-lesion"
    assert manifest["output"] == "score+lesion_map"
    assert manifest["breast_combiner"]["use_other"] is True
    assert manifest["lesion_map"]["channel"] == 0  # the any-abnormality map scores films
    assert manifest["architecture_kwargs"]["fine"] is True
    assert manifest["training"]["stride8_features"] is True
    assert 0.0 < manifest["lesion_map"]["detection_threshold"] <= 1.0
    assert manifest["input"]["spacing_mm"] == 0.8
    assert (model_dir / "weights.safetensors").stat().st_size < 50 * 2**20


def test_evaluate_lesion_model_with_froc(
    trained_lesion: tuple[Result, Path, Path], mias_dir: Path, mias_1024_subset_csv: Path
) -> None:
    _, _, model_dir = trained_lesion
    result = CliRunner().invoke(
        evaluate_command,
        [
            "--model", str(model_dir),
            "--labels", str(mias_1024_subset_csv),
            "--images-root", str(mias_dir),
            "--lesions", str(mias_dir / "mias_abnormalities.csv"),
            "--bootstrap", "50",
            "--json",
            "--no-progress",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(payload) >= EVAL_KEYS | {"froc"}
    assert payload["froc"]["n_lesions"] == 3
    assert payload["froc"]["n_findings_without_centre"] == 0


def test_benchmark_times_the_lesion_head_and_each_tail_stage(
    mias_dir: Path, mias_1024_subset_csv: Path, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        train_command,
        [
            "--labels", str(mias_1024_subset_csv),
            "--images-root", str(mias_dir),
            "--fast",
            "--architectures", "lite0-lesion",
            "--lesions", str(mias_dir / "mias_abnormalities.csv"),
            "--feature-cache", str(tmp_path),
            "--benchmark",
            "--no-progress",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "lite0-lesion head:" in result.output
    assert "tail stage 1" in result.output and "tail stage 2" in result.output
