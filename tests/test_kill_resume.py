"""SIGKILL at random moments, then ``--resume``: the result equals an uninterrupted run, bit for bit.

Each test starts the CLI as a subprocess, waits until it has written a new epoch (pretraining) or
a new fold (fine-tuning), sleeps a random fraction of a second (seeded) and kills it with SIGKILL,
three times, then lets a last ``--resume`` finish and compares with a run that was never killed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_tiny_config
from safetensors.torch import load_file

from multimodal.synthetic import write_synthetic_cohort

KILLS = 3
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("kill")
    cohort = write_synthetic_cohort(folder / "cohort", n=40, grid=16, labeled_fraction=1.0, seed=6, prevalence=0.3)
    path = write_tiny_config(folder / "run.yaml", cohort, pretrain={"epochs": 40},
                               finetune={"mode": "scratch", "epochs": 3, "batch_size": 8, "folds": 3, "repeats": 3,
                                         "bootstrap": 100, "hidden": 16, "baselines": ["logistic_regression"]})
    return path


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: the same float sums in every process
    return subprocess.Popen([sys.executable, "-m", "strokessl.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(args: list[str]) -> None:
    proc = _start(args)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]


def _kill_repeatedly(args: list[str], progress, rng: random.Random) -> int:
    """Kill ``args`` at a random moment after each new ``progress()`` value; returns the kills made."""
    kills = 0
    while kills < KILLS:
        before = progress()
        proc = _start(args)
        deadline = time.time() + 300
        while progress() == before and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.8))  # somewhere inside the next epoch / fold
        if proc.poll() is not None:  # finished before the kill: nothing left to interrupt
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    return kills


def test_pretraining_killed_three_times_resumes_bit_identical(config, tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    _finish(["pretrain", str(config), "--set", f"run.dir={reference}"])
    pointer = killed / "checkpoints" / "latest.json"

    def epoch() -> int:
        try:
            return json.loads(pointer.read_text())["epoch"]
        except (OSError, ValueError):
            return 0

    args = ["pretrain", str(config), "--set", f"run.dir={killed}", "--resume"]
    assert _kill_repeatedly(args, epoch, random.Random(0)) == KILLS
    _finish(args)
    ours = load_file(str(killed / "checkpoints" / "model.safetensors"))
    theirs = load_file(str(reference / "checkpoints" / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    assert all(ours[k].equal(theirs[k]) for k in ours)
    history = [json.loads((run / "metrics.json").read_text())["history"] for run in (killed, reference)]
    assert history[0] == history[1]


def test_finetuning_killed_three_times_resumes_bit_identical(config, tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    _finish(["finetune", str(config), "--set", f"run.dir={reference}"])

    def folds_done() -> int:
        return len(list((killed / "folds").glob("*.json")))

    assert _kill_repeatedly(["finetune", str(config), "--set", f"run.dir={killed}", "--resume"], folds_done,
                            random.Random(1)) == KILLS
    _finish(["finetune", str(config), "--set", f"run.dir={killed}", "--resume"])
    assert (killed / "predictions.csv").read_text() == (reference / "predictions.csv").read_text()
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (killed, reference)]
    assert metrics[0] == metrics[1]
