import pytest

from multimodal.config import RunConfig
from multimodal.config_mapping import from_dict
from multimodal.errors import ConfigError
from pretrain.config import pretrain_config


def config(**pretrain):
    return from_dict(RunConfig, {"cohort": "c.yaml", "pretrain": pretrain})


def test_defaults_are_clip():
    cfg = pretrain_config(config())
    assert cfg.objectives == {"clip": 1.0} and cfg.modalities == ("image", "table")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"epoch": 3}, "did you mean 'epochs'"),
        ({"objectives": {"clipp": 1.0}}, "did you mean 'clip'"),
        ({"objectives": {"scarf": 1.0, "simclr": 1.0}}, "scarf is the record-only baseline"),
        ({"objectives": {"masked_tabular": 1.0, "simclr": 1.0}}, "needs clip too"),
        ({"objectives": {"itm": 1.0}}, "add clip"),
        ({"precision": "fp8"}, "pretrain.precision"),
        ({"rows": "labeled"}, "pretrain.rows"),
        ({"clip_image_weight": 1.5}, r"\[0, 1\]"),
    ],
)
def test_bad_pretrain_sections(section, message):
    with pytest.raises(ConfigError, match=message):
        pretrain_config(config(**section))


def test_unimodal_baselines_train_one_branch():
    assert pretrain_config(config(objectives={"simclr": 1.0})).modalities == ("image",)
    assert pretrain_config(config(objectives={"scarf": 1.0})).modalities == ("table",)
    assert pretrain_config(config(objectives={"clip": 1.0, "simclr": 1.0})).modalities == ("image", "table")
