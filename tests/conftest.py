import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
torch.set_num_threads(1)
# token caches built outside a training run (scripts/pretokenize.py, TokenDataset in tests) stay out of $HOME
os.environ.setdefault("VISTOK_CACHE", os.path.join(__import__("tempfile").gettempdir(), f"vistok-test-cache-{os.getpid()}"))

TINY_VQ = [
    "model.ch=8", "model.ch_mult=[1,2]", "model.z_channels=16", "model.codebook_size=32", "model.codebook_dim=8",
    "model.kmeans_init=false", "model.dead_code_threshold=0",
    "train.batch_size=16", "train.log_with=none", "train.progress=false", "train.image_every=0", "train.eval_every=0",
    "train.mixed_precision=no", "train.warmup_steps=2",
]


@pytest.fixture
def tiny_vq_overrides(tmp_path):
    return TINY_VQ + [f"train.output_dir={tmp_path / 'run'}"]


def run_cli(args, env_extra=None, check=True, timeout=600):
    import subprocess

    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}")
    return proc
