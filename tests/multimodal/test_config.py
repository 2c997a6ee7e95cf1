from pathlib import Path

import pytest
import yaml

from multimodal.config import (
    CohortConfig,
    RunConfig,
    load_cohort_config,
    load_run_config,
    save_config,
)
from multimodal.config_mapping import from_dict, to_dict
from multimodal.errors import ConfigError


def write_run_config(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_unknown_top_level_key_names_nearest(tmp_path):
    path = write_run_config(tmp_path, {"cohort": "c.yaml", "sed": 3})
    with pytest.raises(ConfigError, match=r"'sed'.*did you mean 'seed'"):
        load_run_config(path)


def test_unknown_nested_key_names_section_and_nearest(tmp_path):
    path = write_run_config(tmp_path, {"cohort": "c.yaml", "imaging": {"spacng": [1, 1, 1]}})
    with pytest.raises(ConfigError, match=r"'imaging\.spacng'.*did you mean 'spacing'"):
        load_run_config(path)


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path):
    path = write_run_config(tmp_path / "configs", {"cohort": "../data/cohort.yaml"})
    config = load_run_config(path)
    assert config.cohort.resolve() == (tmp_path / "data" / "cohort.yaml").resolve()
    assert config.data.cache_dir is None  # resolved per cohort read: multimodal.data.cache_dir_for
    assert config.run.dir.name == "exp" and config.run.dir.parent.name == "runs"


def test_stage_paths_resolve_against_the_yaml_or_the_working_directory(tmp_path, monkeypatch):
    path = write_run_config(tmp_path / "configs", {"cohort": "c.yaml", "finetune": {"test_cohort": "../t/cohort.yaml"}})
    config = load_run_config(path)
    assert Path(config.finetune["test_cohort"]).resolve() == (tmp_path / "t" / "cohort.yaml").resolve()
    monkeypatch.chdir(tmp_path)
    config = load_run_config(path, ["finetune.test_cohort=other/cohort.yaml"])
    assert Path(config.finetune["test_cohort"]).resolve() == (tmp_path / "other" / "cohort.yaml").resolve()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = load_run_config(path, ["finetune.test_cohort=~/t/cohort.yaml"])
    assert Path(config.finetune["test_cohort"]) == tmp_path / "home" / "t" / "cohort.yaml"
    # the resolved path survives a save and reload (the run folder's copy of the config)
    save_config(config, tmp_path / "saved.yaml")
    assert load_run_config(tmp_path / "saved.yaml").finetune["test_cohort"] == config.finetune["test_cohort"]


def test_set_overrides_types_and_nesting(tmp_path):
    path = write_run_config(tmp_path, {"cohort": "c.yaml", "seed": 1})
    config = load_run_config(path, ["seed=7", "imaging.spacing=[1.5, 1.5, 3]", "imaging.augment.enabled=false",
                                    "imaging.augment.noise_std=5e-2"])
    assert config.seed == 7 and config.imaging.augment.noise_std == 0.05  # YAML 1.1 reads 5e-2 as text
    assert config.imaging.spacing == (1.5, 1.5, 3.0)
    assert config.imaging.augment.enabled is False


def test_set_unknown_key_is_an_error(tmp_path):
    path = write_run_config(tmp_path, {"cohort": "c.yaml"})
    with pytest.raises(ConfigError, match="did you mean 'workers'"):
        load_run_config(path, ["data.worker=2"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"cohort": "c.yaml", "seed": "abc"}, "seed must be a int"),
        ({"cohort": "c.yaml", "imaging": {"spacing": [1, 1]}}, "must have 3 values"),
        ({"cohort": "c.yaml", "data": {"cache_dtype": "float61"}}, "did you mean 'float16'"),
        ({"seed": 1}, "'cohort' is required"),
    ],
)
def test_bad_values_are_config_errors(tmp_path, data, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(write_run_config(tmp_path, data))


def test_saved_config_loads_back_identical(tmp_path):
    path = write_run_config(tmp_path, {"cohort": "c.yaml", "imaging": {"spatial_size": [16, 16, 8]}})
    config = load_run_config(path)
    save_config(config, tmp_path / "run" / "config.yaml")
    again = load_run_config(tmp_path / "run" / "config.yaml")
    assert to_dict(again) == to_dict(config)


def test_cohort_config_checks_policy_and_types(tmp_path):
    (tmp_path / "cohort.yaml").write_text("csv: cohort.csv\nimages: {flair: f}\nmissing_images: zeros\n")
    with pytest.raises(ConfigError, match="did you mean 'zero'"):
        load_cohort_config(tmp_path / "cohort.yaml")
    with pytest.raises(ConfigError, match="continuous"):
        from_dict(CohortConfig, {"csv": "x.csv", "types": {"age": "numeric"}})
    with pytest.raises(ConfigError, match="volume_index"):
        from_dict(CohortConfig, {"csv": "x.csv", "images": {"dwi": "d"}, "volume_index": {"adc": 0}})


def test_run_config_defaults_are_gpu_sized():
    config = from_dict(RunConfig, {"cohort": "c.yaml"})
    assert config.imaging.spatial_size == (96, 112, 96)
    assert config.data.cache_dtype == "float32"


def test_set_mapping_replaces_the_whole_mapping(tmp_path):
    path = write_run_config(tmp_path, {"cohort": "c.yaml", "pretrain": {"objectives": {"clip": 1.0, "itm": 1.0}, "lr": 0.1}})
    config = load_run_config(path, ["pretrain.objectives={clip: 1.0}"])
    assert config.pretrain == {"objectives": {"clip": 1.0}, "lr": 0.1}
