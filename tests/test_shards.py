"""Tar shards (webdataset layout): written by scripts/make_shards.py (resumable), read by random access,
equal to the folder they came from, trainable, bad shards named."""
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import call_cli, last_json
from vistok.data.images import ImageFolder
from vistok.data.shards import ShardDataset


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "imgs" / "train" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "imgs" / "train" / c / f"{i}.png")
    return tmp_path / "imgs"


def test_shards_equal_the_folder_and_writing_resumes(folder, tmp_path):
    out = tmp_path / "shards"
    args = ["scripts/make_shards.py", "--root", folder, "--out", out, "--per-shard", "4"]
    first = last_json(call_cli(args))
    assert first == {"out": str(out), "shards": 3, "written_now": 3, "samples": 10, "classes": 2}
    (out / "train-000002.tar").unlink()  # as if the run had stopped before the last shard
    assert last_json(call_cli(args))["written_now"] == 1
    shards, ref = ShardDataset(str(out), "train", image_size=16, flip=False), ImageFolder(str(folder), "train", 16, flip=False)
    assert len(shards) == len(ref) == 10
    for i in (0, 4, 9):
        a, b = shards[i], ref[i]
        assert a["label"] == b["label"] and torch.equal(a["image"], b["image"])
    assert sorted(p.name for p in out.glob("*.index.json")) == [f"train-00000{i}.tar.index.json" for i in range(3)]


def test_training_reads_shards_and_bad_shards_are_named(folder, tmp_path):
    from tests.conftest import TINY_VQ
    from vistok.config import load_config
    from vistok.training.trainer import train

    out = tmp_path / "shards"
    call_cli(["scripts/make_shards.py", "--root", folder, "--out", out, "--per-shard", "6"])
    (out / "test-000000.tar").write_bytes((out / "train-000001.tar").read_bytes())  # a held-out split
    cfg = load_config("configs/vqgan/mnist.yaml", TINY_VQ + [
        "data.type=shards", f"data.root={out}", "data.image_size=16", "model.in_channels=3", "model.image_size=16",
        "train.batch_size=4", "train.max_steps=3", f"train.output_dir={tmp_path / 'run'}"])
    assert train(cfg)["step"] == 3
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train-000000.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(ValueError, match="train-000000.tar' is not a readable"):
        ShardDataset(str(tmp_path / "bad"))
    with pytest.raises(FileNotFoundError, match="no shards"):
        ShardDataset(str(tmp_path / "nowhere"))
