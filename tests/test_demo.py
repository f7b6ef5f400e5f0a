"""The README's main command: the demo runs the whole node on the sample exams."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import make_settings
from model_factory import tiny_model_folder
from PIL import Image

from cad_node.demo import run_demo


@pytest.mark.slow
def test_demo_analyses_both_exams_and_writes_a_montage(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path / "data",
        study_quiet_seconds=1.0,
        model=str(tiny_model_folder(tmp_path / "model", size=128)),
    )
    lines: list[str] = []
    assert run_demo(settings, lines.append, timeout=300) == 0
    text = "\n".join(lines)
    assert text.count(": done") == 2
    assert text.count("breast L: score") == 2 and text.count("breast R: score") == 2
    montage = Image.open(settings.data_dir / "demo-heatmaps.png")
    assert montage.width > montage.height  # two rows of four overlays
    for job in (1, 2):
        reports = list((settings.outbox_dir / f"job-{job}").glob("*.dcm"))
        assert len(reports) == 6
    assert "WARNING: model test-light 0.0.1 is a smoke-test model" in text
    assert "marks" not in text.replace("(marks, where", "")  # this model does not localise


@pytest.mark.slow
def test_demo_with_the_installed_default_model(tmp_path: Path) -> None:
    """What `scripts/demo` runs: no model configured, so models/DEFAULT analyses the exams."""
    from cad_node.model_folder import default_model_path, read_manifest, validation_warning

    settings = make_settings(tmp_path / "data", study_quiet_seconds=1.0)
    assert not settings.model
    lines: list[str] = []
    assert run_demo(settings, lines.append, timeout=300) == 0
    text = "\n".join(lines)
    assert text.count(": done") == 2
    assert text.count("breast L: score") == 2 and text.count("breast R: score") == 2
    assert (settings.data_dir / "demo-heatmaps.png").is_file()
    # the known pathology beside the scores, and the marks of the localising default model
    assert "known pathology: biopsy-proven malignant mass, left breast" in text
    assert "[known: malignant mass]" in text and "single cases, not evidence" in text
    assert text.count("    marks L-CC ") == 2 and text.count("    marks R-CC ") == 2

    # ops see the same marks in the audit trail
    from click.testing import CliRunner

    from cad_node.audit.db import make_engine
    from cad_node.audit.jobs import JobRepository
    from cad_node.cli import main

    uid = next(line.split()[1][:-1] for line in lines if line.startswith("\nstudy "))
    env = {"CAD_NODE_DATA_DIR": str(settings.data_dir)}
    shown = CliRunner(env=env).invoke(main, ["audit", "show", uid])
    assert shown.exit_code == 0, shown.output
    [job] = JobRepository(make_engine(settings.effective_database_url)).jobs_of_study(uid)
    marks = sum(len(i["detections"]) for i in job.result["images"])
    assert shown.output.count("    marks ") == 4
    assert len(re.findall(r"x \d+ y \d+ r \d+ score 0\.\d\d", shown.output)) == marks
    warning = validation_warning(read_manifest(default_model_path()))
    assert (f"WARNING: {warning}." in text) if warning else ("WARNING" not in text)


@pytest.mark.slow
def test_demo_without_a_model_shows_ingest_and_assembly_and_says_why(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", study_quiet_seconds=1.0)
    lines: list[str] = []
    assert run_demo(settings, lines.append, timeout=120, analyse=False) == 0
    text = "\n".join(lines)
    assert text.count("complete, views L-CC, L-MLO, R-CC, R-MLO") == 2
    assert "No model is installed" in text
    assert not (settings.data_dir / "demo-heatmaps.png").exists()
