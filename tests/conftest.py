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


def call_cli(args, check=True):
    """``python SCRIPT args`` in this process: ``args[0]`` names a repository script ("sample.py",
    "scripts/latent_scale.py") whose ``main(argv)`` runs through ``vistok.cli.run`` as from the shell. Returns
    what ``run_cli`` returns (returncode, stdout, stderr), without a new interpreter re-importing torch."""
    import contextlib
    import importlib
    import io
    import subprocess

    from vistok.cli import run

    module = importlib.import_module(os.path.splitext(args[0])[0].replace("/", "."))
    argv, out, err = [str(a) for a in args[1:]], io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = run(module.main, argv)
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    proc = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"{args} returned {code}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}")
    return proc


def last_json(proc):
    """The JSON object a CLI prints as its last line."""
    import json

    return json.loads(proc.stdout.strip().splitlines()[-1])


def psnr_baselines(images):
    """Mean PSNR (the recon protocol's) of two reconstructions that ignore their input, on ``images`` in [-1, 1]:
    all black, and the mean image of the set (on MNIST the best constant image, found by gradient ascent, beats it
    by 0.04 dB). A tokenizer that learnt nothing about its input scores no better than the mean image."""
    import torch

    from vistok.metrics.image import ReconstructionMeter

    def psnr(recons):
        meter = ReconstructionMeter()
        meter.update(images, recons)
        return meter.compute(sync=False)["psnr"]

    return {"black": psnr(torch.full_like(images, -1.0)), "mean": psnr(images.mean(0, keepdim=True).expand_as(images))}


def trained_vs_fresh(cfg, batch: dict):
    """(the losses of a freshly built model on ``batch``, the same after ``train(cfg)``, the trained model): the
    fresh one is built as the trainer builds it (seed 0) and both are read in training mode without gradients."""
    from vistok.config import build
    from vistok.loading import model_from_run
    from vistok.training.trainer import train

    torch.manual_seed(0)
    fresh = build("model", cfg.model)
    with torch.no_grad():
        before = fresh.train()(batch)
    train(cfg)
    model, _, _ = model_from_run(cfg.train.output_dir, use_ema=False)
    with torch.no_grad():
        after = model.train()(batch)
    return before, after, model
