"""Two CPU processes (torchrun, gloo) train exactly like one process with the same global batch."""
import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tests.conftest import ROOT, TINY_VQ, run_cli

pytestmark = pytest.mark.slow  # every test here starts torchrun process groups

PARITY = TINY_VQ + ["model.ema=false", "data.limit=96", "train.max_steps=20", "train.log_every=1",
                    "train.checkpoint_every=20", "train.ema_decay=0", "train.lr=3e-3"]


def _train(out, processes: int, batch: int):
    args = ["train.py", "--config", "configs/vqgan/mnist.yaml", *PARITY, f"train.batch_size={batch}",
            f"train.output_dir={out}"]
    if processes == 1:
        run_cli(args)
    else:
        env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    return summary, load_file(str(out / "checkpoints" / "checkpoint-20" / "model.safetensors"))


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    one, w1 = _train(tmp_path / "one", 1, 16)
    two, w2 = _train(tmp_path / "two", 2, 8)
    assert one["num_processes"] == 1 and two["num_processes"] == 2
    l1, l2 = [v for _, v in one["losses"]], [v for _, v in two["losses"]]
    assert len(l1) == len(l2) == 20 and l1[-1] < l1[0]
    assert max(abs(a - b) for a, b in zip(l1, l2)) < 1e-4, (l1, l2)
    assert set(w1) == set(w2)
    diff = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    assert diff <= 1e-5, f"max |w_1proc - w_2proc| = {diff}"


def test_evaluation_statistics_reduce_over_uneven_shards(tmp_path):
    """7 items over 2 ranks (4 + 3): PSNR/SSIM sums, codebook counts, FID mean/covariance and KID features
    reduced across ranks equal one process's."""
    run_cli(["tests/helpers/dist_eval.py", str(tmp_path / "one.json")])
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "tests/helpers/dist_eval.py", str(tmp_path / "two.json"), "--dist"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert (one["world"], two["world"], one["rank_items"], two["rank_items"]) == (1, 2, 7, 4)
    assert one["n"] == two["n"] == 7 and one["usage"] == two["usage"]
    for key in ("psnr", "ssim", "perplexity"):
        assert abs(one[key] - two[key]) < 1e-9, key
    import numpy as np

    assert np.allclose(one["mu"], two["mu"], atol=1e-12) and np.allclose(one["sigma"], two["sigma"], atol=1e-12)
    assert np.allclose(one["features"], two["features"])


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory):
    from vistok.config import load_config
    from vistok.pipelines.release import release
    from vistok.training.trainer import train

    tmp = tmp_path_factory.mktemp("tiny")
    train(load_config(os.path.join(ROOT, "configs/vqgan/mnist.yaml"),
                      TINY_VQ + ["data.limit=32", "train.max_steps=2", f"train.output_dir={tmp / 'run'}"]))
    release(str(tmp / "rel"), tokenizer=str(tmp / "run"))
    return tmp / "rel"


def test_recon_cli_under_two_processes_equals_one(tiny_release):
    args = ["evaluate.py", "recon", "--pipeline", str(tiny_release), "--max-images", "25", "--batch-size", "4"]
    one = json.loads(run_cli(args).stdout.strip().splitlines()[-1])
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    assert len(lines) == 1  # rank 0 prints
    two = json.loads(lines[0])
    assert one["num_images"] == two["num_images"] == 25
    for key in ("psnr", "ssim", "codebook_usage", "perplexity", "fd_lenet"):
        assert abs(one[key] - two[key]) < 1e-6, (key, one[key], two[key])


def test_pretokenization_is_distributed_and_resumes(tiny_release, tmp_path):
    import torch
    from safetensors.torch import load_file

    from vistok.data.base import build_dataset
    from vistok.caches.tokens import TokenDataset, build_token_cache
    from vistok.pipelines.base import Pipeline

    reference = TokenDataset(str(tiny_release), "test", chunk=1000, cache_dir=str(tmp_path / "ref"))  # one process, one chunk
    codes = reference.codes.clone()
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "scripts/pretokenize.py",
                           "--tokenizer", str(tiny_release), "--splits", "test", "--chunk", "8",
                           "--cache-dir", str(tmp_path / "dist")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])["test"]
    assert out["items"] == len(codes) == 32 and torch.equal(load_file(out["cache"])["codes"].long(), codes)  # 4 chunks, 2 ranks
    assert out["cache"].startswith(str(tmp_path / "dist"))

    class Dies:  # the dataset of an encoding that is killed after its first chunks
        def __init__(self, ds, limit, done=0):
            self.ds, self.limit, self.done = ds, limit, done

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            if i >= self.limit:
                raise KeyboardInterrupt("killed")
            assert i >= self.done, f"item {i} of a finished chunk was encoded again"
            return self.ds[i]

    pipe = Pipeline.from_pretrained(str(tiny_release))
    data, cache = build_dataset(pipe.data, "test"), str(tmp_path / "c.safetensors")
    with pytest.raises(KeyboardInterrupt):
        build_token_cache(pipe.tokenizer, Dies(data, 20), cache, batch_size=4, chunk=8)
    assert sorted(os.listdir(cache + ".parts")) == ["chunk-000000.safetensors", "chunk-000001.safetensors"]
    build_token_cache(pipe.tokenizer, Dies(data, 10**9, done=16), cache, batch_size=4, chunk=8)  # resumes at chunk 2
    assert torch.equal(load_file(cache)["codes"].long(), codes) and not os.path.exists(cache + ".parts")
