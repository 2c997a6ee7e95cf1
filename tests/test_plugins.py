"""A modality from outside the package: found through an entry point or a config's ``plugins:`` list
when the ``strokessl`` CLI runs as its own process, recorded in the run, required by ``predict``."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import TINY_IMAGING

from multimodal.config import load_run_config
from multimodal.errors import ConfigError
from multimodal.synthetic import write_synthetic_cohort

REPO = Path(__file__).resolve().parents[1]
PLUGIN = textwrap.dedent('''
    """A third party's modality: the report as a bag of hashed character trigrams."""
    import zlib

    import torch
    from torch import nn

    from multimodal.data import register_modality
    from multimodal.encoders import register_encoder


    @register_modality("notes")
    def read_notes(cohort, ids, args):
        column = cohort.text["report"].reindex(ids)
        rows = torch.zeros(len(ids), 16)
        for i, text in enumerate(column):
            if isinstance(text, str):
                for j in range(len(text) - 2):
                    rows[i, zlib.crc32(text[j:j + 3].encode()) % 16] += 1.0
        return torch.log1p(rows), torch.tensor([isinstance(t, str) and bool(t.strip()) for t in column])


    class Trigrams(nn.Module):
        def __init__(self, dim=8):
            super().__init__()
            self.linear, self.num_features = nn.Linear(16, dim), dim

        def forward_features(self, x):
            return {"embedding": self.linear(x)}

        def forward(self, x):
            return self.linear(x)


    @register_encoder("trigram_notes", modality="notes")
    def trigram_notes(dim=8):
        return Trigrams(dim)
''')


def _cli(args, pythonpath):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath), "CI": "true"}
    return subprocess.run([sys.executable, "-m", "strokessl", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def plugin_folder(tmp_path_factory):
    """``notes_plugin.py`` and a distribution declaring it under the ``strokessl.modalities`` group."""
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "notes_plugin.py").write_text(PLUGIN)
    dist = folder / "notes_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: notes-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[strokessl.modalities]\nnotes = notes_plugin\n")
    return folder


def _config(folder, cohort, **extra):
    config = {**TINY_IMAGING, "cohort": str(cohort), **extra,
              "model": {"encoders": {"image": {"name": "resnet3d_10", "args": {"widen_factor": 0.25}},
                                     "table": {"name": "tabular_mlp"},
                                     "notes": {"name": "trigram_notes", "args": {"dim": 8}}}},
              "pretrain": {"epochs": 1, "batch_size": 8, "rows": "all", "val_fraction": 0.25,
                           "projection_dim": 16, "projection_hidden": 32},
              "finetune": {"folds": 2, "repeats": 1, "bootstrap": 100, "baselines": ["logistic_regression"]}}
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_an_entry_point_modality_trains_and_predicts_through_the_cli(plugin_folder, tmp_path):
    cohort = write_synthetic_cohort(tmp_path / "cohort", n=32, grid=16, labeled_fraction=1.0, seed=4, prevalence=0.3)
    config = _config(tmp_path, cohort)
    path = [plugin_folder, REPO]  # the plugin is found through its distribution's entry point
    pretrained, finetuned = tmp_path / "pretrain", tmp_path / "finetune"
    done = _cli(["pretrain", config, "--set", f"run.dir={pretrained}"], path)
    assert done.returncode == 0, done.stderr[-2000:]
    done = _cli(["finetune", config, "--init", pretrained, "--set", f"run.dir={finetuned}"], path)
    assert done.returncode == 0, done.stderr[-2000:]
    facts = json.loads((finetuned / "run.json").read_text())["facts"]
    assert facts["plugins"] == {"notes": "trigram_notes"} and facts["plugin_modules"] == ["notes_plugin"]
    out = tmp_path / "predictions.csv"
    done = _cli(["predict", finetuned, "--cohort", cohort, "--out", out], path)
    assert done.returncode == 0 and out.is_file(), done.stderr[-2000:]
    # without the plugin installed the run cannot be read: one line naming the module
    done = _cli(["predict", finetuned, "--cohort", cohort, "--out", tmp_path / "again.csv"], [REPO])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "notes_plugin" in lines[0] and "PYTHONPATH" in lines[0], done.stderr


def test_the_plugins_list_imports_a_module_and_refuses_a_missing_one(plugin_folder, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_folder / "nowhere"))
    cohort = write_synthetic_cohort(tmp_path / "cohort", n=8, grid=16, labeled_fraction=1.0, seed=4)
    with pytest.raises(ConfigError, match="plugins: module 'no_such_plugin' cannot be imported"):
        load_run_config(_config(tmp_path, cohort, plugins=["no_such_plugin"]))
    # in this process a module of another name and modality (other tests register "notes" here)
    (tmp_path / "memo_plugin.py").write_text(PLUGIN.replace("notes", "memo"))
    monkeypatch.syspath_prepend(str(tmp_path))
    path = _config(tmp_path, cohort, plugins=["memo_plugin"])
    path.write_text(path.read_text().replace("notes", "memo"))
    config = load_run_config(path)
    assert config.plugins == ["memo_plugin"] and config.model.encoders["memo"].name == "trigram_memo"
