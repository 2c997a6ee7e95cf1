"""The real pretraining under ``torchrun`` with 2 CPU processes (gloo): the default objective runs,
and both processes build the MRI cache.

Which parameters a step uses depends on the objectives (clip alone never reads the image tokens'
positions), and DistributedDataParallel refuses a second step when a parameter got no gradient
unless it is told to look for unused ones. The toy-model equivalence test of
``test_distributed.py`` cannot see that; this one runs the CLI itself.
"""

import json
import os
import subprocess
import sys

from conftest import write_tiny_config

from multimodal.synthetic import write_synthetic_cohort


def test_torchrun_two_processes_pretrain_the_default_objective(tmp_path):
    cohort = write_synthetic_cohort(tmp_path / "c", n=40, grid=16, labeled_fraction=0.0, seed=1)
    config = write_tiny_config(tmp_path / "tiny.yaml", cohort,
                               pretrain={"epochs": 1, "batch_size": 4, "val_fraction": 0.2})
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "strokessl.cli", "pretrain", str(config), "--set", f"run.dir={run}",
                           "--set", "data.workers=0"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # the MRI cache is built by both processes, half each (rank 0 alone could outlast NCCL's timeout;
    # the other ranks log warnings only)
    assert "rank 0 of 2: 20 MRI cache entries built" in done.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics  # written last: the run finished
    # 32 training subjects in batches of 4: several steps ran (the failure came at the second)
    assert (run / "checkpoints" / "image_encoder.safetensors").is_file()
