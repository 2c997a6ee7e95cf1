"""finetune.plots: each figure is a real PNG at the requested path, written atomically."""

import os

import numpy as np
import pytest
from matplotlib.figure import Figure

from finetune.metrics import risk_groups
from finetune.plots import plot_calibration, plot_pr, plot_risk_groups, plot_roc

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    y = (rng.random(120) < 0.2).astype(int)
    good = 1 / (1 + np.exp(-(rng.normal(size=120) + 1.5 * y - 1.5)))
    return y, {"fusion": good, "logistic regression": rng.random(120)}


def assert_png_and_nothing_else(folder, names):
    assert sorted(os.listdir(folder)) == sorted(names)  # no temp files left behind
    for name in names:
        assert (folder / name).read_bytes()[:8] == PNG_MAGIC


def test_all_plots_write_pngs(tmp_path, predictions):
    y, models = predictions
    report = tmp_path / "report"  # created on demand
    paths = [
        plot_roc(y, models, report / "roc.png"),
        plot_pr(y, models, report / "pr.png"),
        plot_calibration(y, models["fusion"], report / "calibration.png"),
        plot_risk_groups(risk_groups(y, models["fusion"], 0.3), str(report / "risk_groups.png")),
    ]
    assert [p.name for p in paths] == ["roc.png", "pr.png", "calibration.png", "risk_groups.png"]
    assert_png_and_nothing_else(report, [p.name for p in paths])


def test_overwrite_replaces_the_file(tmp_path, predictions):
    y, models = predictions
    target = tmp_path / "roc.png"
    target.write_bytes(b"old")
    plot_roc(y, {"fusion": models["fusion"]}, target)
    assert_png_and_nothing_else(tmp_path, ["roc.png"])


def test_failed_save_leaves_neither_temp_file_nor_target(tmp_path, predictions, monkeypatch):
    y, models = predictions

    def broken_savefig(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plot_calibration(y, models["fusion"], tmp_path / "calibration.png")
    assert os.listdir(tmp_path) == []


def test_risk_groups_plot_handles_an_empty_group(tmp_path, predictions):
    y, models = predictions
    path = plot_risk_groups(risk_groups(y, models["fusion"], 1.0), tmp_path / "risk.png")
    assert_png_and_nothing_else(tmp_path, [path.name])


def test_bad_inputs_raise(tmp_path, predictions):
    y, models = predictions
    with pytest.raises(ValueError, match="both outcome classes"):
        plot_roc(np.zeros_like(y), models, tmp_path / "roc.png")
    with pytest.raises(ValueError, match="empty"):
        plot_pr(y, {}, tmp_path / "pr.png")
    with pytest.raises(ValueError, match="risk_groups"):
        plot_risk_groups({"high": {}}, tmp_path / "risk.png")
    assert os.listdir(tmp_path) == []
