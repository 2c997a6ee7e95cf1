import errno
import os

import pytest
import torch

from multimodal.checkpoint import atomic_path, atomic_write_text, load_weights, save_weights
from multimodal.errors import StrokeSSLError


def test_atomic_write_leaves_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "state.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["state.txt"]


def test_safetensors_round_trip_and_prefix_stripping(tmp_path):
    state = {"module.layer.weight": torch.randn(3, 2), "_orig_mod.bias": torch.arange(4)}
    save_weights(state, tmp_path / "w.safetensors")
    loaded = load_weights(tmp_path / "w.safetensors")
    assert set(loaded) == {"layer.weight", "bias"}
    assert torch.equal(loaded["layer.weight"], state["module.layer.weight"])


def test_pt_file_with_state_dict_wrapper_loads(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, tmp_path / "w.pt")
    assert torch.equal(load_weights(tmp_path / "w.pt")["w"], torch.ones(2))


class NotATensor:
    pass


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"w": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(StrokeSSLError, match="weights_only=True"):
        load_weights(tmp_path / "evil.pt")


def test_missing_and_corrupt_files_are_user_errors(tmp_path):
    with pytest.raises(StrokeSSLError, match="does not exist"):
        load_weights(tmp_path / "absent.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(StrokeSSLError, match="not a readable safetensors"):
        load_weights(tmp_path / "bad.safetensors")


@pytest.mark.parametrize(("code", "advice"), [(errno.ENOSPC, "free disk space"), (errno.EACCES, "writable")])
def test_a_refused_write_says_what_to_fix_and_keeps_the_old_file(tmp_path, monkeypatch, code, advice):
    from multimodal import checkpoint

    target = tmp_path / "state.json"
    checkpoint.atomic_write_text(target, "old")

    def refuse(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(checkpoint.os, "replace", refuse)
    with pytest.raises(StrokeSSLError, match=advice):
        checkpoint.atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp left


def test_an_unwritable_run_folder_is_one_clear_line(tmp_path, monkeypatch):
    from pathlib import Path

    from multimodal.checkpoint import make_folder

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", refuse)  # root ignores file modes, so refuse the way the OS would
    with pytest.raises(StrokeSSLError, match=r"cannot write .*folds \(Permission denied\): make the folder writable"):
        make_folder(tmp_path / "run" / "folds")


def test_strict_json_writes_undefined_values_as_null():
    import json

    import numpy as np

    from multimodal.checkpoint import strict_json

    value = {"slope": float("nan"), "rows": [np.float32(0.5), float("inf"), np.int64(3)], "name": "ece", "n": None,
             "flags": np.array([True, False]), "ok": np.bool_(True)}
    text = json.dumps(strict_json(value), allow_nan=False)  # would raise on a NaN left in
    assert json.loads(text) == {"slope": None, "rows": [0.5, None, 3], "name": "ece", "n": None,
                                "flags": [True, False], "ok": True}
