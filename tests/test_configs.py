"""Every shipped config loads, with both stage sections typed and checked."""

from pathlib import Path

import pytest

from finetune.config import finetune_config
from multimodal.config import load_run_config
from pretrain.config import pretrain_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_is_valid(path):
    config = load_run_config(path)
    pretrain_config(config)
    finetune_config(config)
    assert config.imaging.spatial_size and config.model.encoders["image"].name


def test_configs_exist():
    assert {p.name for p in CONFIGS} >= {"demo.yaml", "pretrain.yaml", "pstszc.yaml"}
