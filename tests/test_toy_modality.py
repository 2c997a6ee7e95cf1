"""A third modality takes one encoder file, one registration and one config entry.

The toy modality ("notes") is a bag of hashed character trigrams of the cohort's ``report`` text
column, encoded by a small MLP. Everything below the registrations is the stock
CLI: pretraining aligns the three modalities (pairwise CLIP), fine-tuning reads all three, and
``predict`` rebuilds the fold models from the run folder alone.
"""

import json
import zlib

import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY_IMAGING
from safetensors.torch import load_file
from torch import nn

from multimodal.data import register_modality
from multimodal.encoders import register_encoder
from multimodal.synthetic import write_synthetic_cohort
from strokessl.cli import main


# --------------------------------------------------------------------------- the toy "encoder file"
@register_modality("notes")
def read_notes(cohort, ids, args):
    """``(N, buckets)`` trigram counts of each subject's report; absent when the cell is empty."""
    buckets = args.get("buckets", 32)
    column = cohort.text["report"].reindex(ids)
    rows = torch.zeros(len(ids), buckets)
    for i, text in enumerate(column):
        if isinstance(text, str):
            for j in range(len(text) - 2):
                rows[i, zlib.crc32(text[j:j + 3].encode()) % buckets] += 1.0
    present = torch.tensor([isinstance(t, str) and bool(t.strip()) for t in column])
    return torch.log1p(rows), present


class BagOfTrigrams(nn.Module):
    def __init__(self, buckets: int = 32, dim: int = 8) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(buckets, dim), nn.GELU(), nn.Linear(dim, dim))
        self.num_features = dim

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"embedding": self.mlp(x)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["embedding"]


@register_encoder("toy_bag_of_trigrams", modality="notes")
def toy_bag_of_trigrams(**kwargs) -> BagOfTrigrams:
    return BagOfTrigrams(**kwargs)


# --------------------------------------------------------------------------- the config entry
CONFIG = {
    **TINY_IMAGING,
    "model": {"encoders": {
        "image": {"name": "resnet3d_10", "args": {"widen_factor": 0.25}},
        "table": {"name": "ft_transformer", "args": {"dim": 16, "depth": 1, "heads": 2}},
        "notes": {"name": "toy_bag_of_trigrams", "args": {"buckets": 32, "dim": 8}},
    }},
    "pretrain": {"epochs": 1, "batch_size": 8, "rows": "all", "val_fraction": 0.25, "projection_dim": 16,
                 "projection_hidden": 32, "objectives": {"clip": 1.0}},
    "finetune": {"folds": 2, "repeats": 1, "bootstrap": 100, "baselines": ["logistic_regression"]},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    cohort = write_synthetic_cohort(folder / "cohort", n=40, grid=16, labeled_fraction=1.0, seed=5, prevalence=0.3)
    config = folder / "toy.yaml"
    config.write_text(yaml.safe_dump(dict(CONFIG, cohort=str(cohort))))
    pretrained, finetuned = folder / "pretrain", folder / "finetune"
    assert main(["pretrain", str(config), "--set", f"run.dir={pretrained}"]) == 0
    assert main(["finetune", str(config), "--init", str(pretrained), "--set", f"run.dir={finetuned}"]) == 0
    return cohort, pretrained, finetuned


def test_third_modality_pretrains_fine_tunes_and_predicts(runs, tmp_path):
    cohort, pretrained, finetuned = runs
    report_weights = load_file(str(pretrained / "checkpoints" / "notes_encoder.safetensors"))
    assert set(report_weights) == {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"}
    architecture = json.loads((finetuned / "model.json").read_text())
    assert sorted(architecture["encoders"]) == ["image", "notes", "table"]
    for run in (pretrained, finetuned):  # the plugin modality is a recorded fact of both runs
        assert set(json.loads((run / "run.json").read_text())["facts"]["plugins"]) == {"notes"}
    # The fold models read the pretrained report encoder, frozen, as it was saved.
    fold = load_file(str(finetuned / "folds" / "r0f0.safetensors"))
    torch.testing.assert_close(fold["notes_encoder.mlp.0.weight"], report_weights["mlp.0.weight"])
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(finetuned), "--cohort", str(cohort), "--out", str(out)]) == 0
    predicted = pd.read_csv(out).set_index("subject_id")
    oof = pd.read_csv(finetuned / "predictions.csv").set_index("subject_id")
    subject = oof.index[0]  # a fold model on the subject it tested reproduces its out-of-fold probability
    assert predicted.loc[subject, f"probability_{oof.loc[subject, 'fold']}"] == pytest.approx(
        oof.loc[subject, "probability"], abs=1e-5)


def test_pairwise_clip_trains_the_third_encoder():
    from multimodal.config import ModelConfig
    from multimodal.config_mapping import from_dict
    from pretrain.config import PretrainConfig
    from pretrain.loop import PretrainStep
    from pretrain.model import build_pretrain_model
    from pretrain.objectives import clip_loss

    model_config = from_dict(ModelConfig, CONFIG["model"])
    settings = PretrainConfig(objectives={"clip": 1.0}, projection_dim=16, projection_hidden=32)
    sizes = {"image": {"in_channels": 1}, "table": {"num_continuous": 2, "category_sizes": [3]}, "notes": {}}
    torch.manual_seed(0)
    model = build_pretrain_model(model_config, settings, sizes)
    step = PretrainStep(model, settings, [3], {}, seed=0)
    batch = {"image": torch.randn(4, 1, 16, 16, 16), "notes": torch.rand(4, 32), "index": torch.arange(4),
             "table": {"continuous": torch.randn(4, 2), "categorical": torch.tensor([[1], [2], [0], [1]]),
                       "missing": torch.zeros(4, 3, dtype=torch.bool)}}
    terms = step(batch, 0)
    without = model(image=batch["image"], table=batch["table"])
    image_table = clip_loss(without["image_features"], without["table_features"], without["logit_scale"])["clip_loss"]
    assert not torch.isclose(terms["clip_loss"], image_table)  # the report pairs are in the objective
    terms["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.notes_encoder.parameters())



def test_explain_runs_with_a_third_modality(runs):
    """The explain stage holds the extra modality at the subject's own embedding while it attributes the
    clinical record and the image (fine-tuning run), and explains a three-modality pretraining run's
    image–record similarity."""
    cohort, pretrained, finetuned = runs
    subject = pd.read_csv(cohort.parent / "cohort.csv", dtype=str)["subject_id"].iloc[2]
    assert main(["explain", str(finetuned), "--cohort", str(cohort), "--gallery", "1", "--subject", subject]) == 0
    analysis = json.loads((finetuned / "report" / "explain.json").read_text())
    assert set(analysis["label_probe"]) <= {"image", "table", "notes"} and analysis["attribution"]["subjects"] == 40
    assert (finetuned / "report" / "subjects" / f"{subject}_occlusion.nii.gz").is_file()
    assert main(["explain", str(pretrained), "--cohort", str(cohort), "--gallery", "0"]) == 0
    analysis = json.loads((pretrained / "report" / "explain.json").read_text())
    assert analysis["attribution"]["what"] == "image–record similarity" and "gallery" not in analysis
