"""Every bad input gets an error that names the thing and what was expected, and nothing saved is lost.

The list (README "Reliability"); each line: the input -> where it is tested.
- unknown or mistyped config key, wrong type, unknown model type -> here (and test_config.py)
- missing data folder, empty dataset, a training split smaller than one global batch -> here
- corrupt image -> here (and test_data.py)
- truncated / corrupt safetensors, shapes that do not match the config, release of another model type,
  missing model_type -> test_release.py::test_wrong_model_type_and_bad_files; truncated file also here
- out-of-range class label at sampling -> here and test_demo.py; empty or malformed prompt file -> here
- a disk that fills up while a checkpoint is written -> here: error names the checkpoint, the partial
  folder is removed, the previous checkpoint stays the latest and resumes
- a malicious pickle (inception weights, official checkpoints, LPIPS weights) -> test_evaluation.py,
  test_convert.py: refused by weights-only loading without running
- an official checkpoint with missing / unexpected keys -> test_convert.py
- NaN/inf loss or gradient -> test_trainer.py (stop naming step and term; or skip)
- outputs that would lose a user's files, run folders and locks, damaged checkpoints, SIGKILL mid-checkpoint,
  bad sampling options, image modes, one-line CLI errors -> test_data_safety.py; every declared range of every
  config -> test_ranges.py
"""
import errno
import json
import os

import pytest
import torch

from tests.conftest import ROOT, TINY_VQ, call_cli
from vistok.config import ConfigError, load_config
from vistok.data.base import build_dataset
from vistok import checkpoints as ckpt
from vistok.training.trainer import train

MNIST = os.path.join(ROOT, "configs/vqgan/mnist.yaml")


@pytest.mark.parametrize("override, needle", [
    ("train.max_stepz=5", "unknown key 'train.max_stepz'"),
    ("train.max_steps=lots", "train.max_steps"),
    ("model.codebook_sise=8", "codebook_sise"),
    ("model.type=vqgann", "vqgann"),
])
def test_config_mistakes_name_key_and_file(override, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        load_config(MNIST, [override])
    assert "configs/vqgan/mnist.yaml" in str(e.value)


def test_missing_and_empty_data(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        build_dataset({"type": "image_folder", "root": str(tmp_path / "nowhere")}, "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        build_dataset({"type": "image_folder", "root": str(tmp_path / "empty")}, "train")
    cfg = load_config(MNIST, TINY_VQ + ["data.limit=8", "train.batch_size=16", f"train.output_dir={tmp_path / 'r'}"])
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train(cfg)


def test_corrupt_image_is_named(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ds = build_dataset({"type": "image_folder", "root": str(tmp_path), "image_size": 16}, "train")
    with pytest.raises(Exception, match="broken.png"):
        ds[0]


def test_truncated_weights_are_named(tmp_path):
    from vistok.classifiers.lenet import LeNet
    from vistok.modeling import VistokModel

    LeNet().save_pretrained(str(tmp_path / "m"))
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:500])
    with pytest.raises(ValueError, match="model.safetensors"):
        VistokModel.from_pretrained(str(tmp_path / "m"))


def test_sampling_inputs(tmp_path):
    from vistok.image_files import read_prompts

    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl' is empty"):
        read_prompts(str(tmp_path / "empty.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a red circle"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing key\(s\) \['tag', 'include'\]"):
        read_prompts(str(tmp_path / "bad.jsonl"))
    from vistok.generators.ar import ARGenerator

    gen = ARGenerator(vocab_size=8, token_shape=[2, 2], num_classes=3, dim=16, depth=1, heads=2)
    with pytest.raises(ValueError, match=r"class labels must be in 0..2 \(or 3 for none\), got \[0, 7\]"):
        gen.sample(torch.tensor([0, 7]))


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    from accelerate import Accelerator

    real_save, calls = Accelerator.save_state, []

    def full_disk(self, output_dir=None, **kw):
        calls.append(output_dir)
        if len(calls) == 2:  # the second checkpoint: half a file, then ENOSPC
            os.makedirs(output_dir, exist_ok=True)
            open(os.path.join(output_dir, "model.safetensors"), "wb").write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", full_disk)
    run = tmp_path / "run"
    cfg = load_config(MNIST, TINY_VQ + ["data.limit=64", "train.max_steps=4", "train.checkpoint_every=2",
                                        f"train.output_dir={run}"])
    with pytest.raises(OSError, match="checkpoint-4.*latest complete checkpoint is kept: .*checkpoint-2") as e:
        train(cfg)
    assert e.value.errno == errno.ENOSPC
    ckpt_dir = run / "checkpoints"
    assert sorted(os.listdir(ckpt_dir)) == ["checkpoint-2"]
    assert ckpt.resolve_resume("latest", str(ckpt_dir)).endswith("checkpoint-2")
    monkeypatch.setattr(Accelerator, "save_state", real_save)
    summary = train(load_config(MNIST, TINY_VQ + ["data.limit=64", "train.max_steps=4", "train.checkpoint_every=2",
                                                  f"train.output_dir={run}", "train.resume=latest"]))
    assert summary["start_step"] == 2 and summary["step"] == 4


def test_cli_reports_bad_release_folder(tmp_path):
    (tmp_path / "rel").mkdir()
    (tmp_path / "rel" / "pipeline.json").write_text(json.dumps({"format": "something-else"}))
    proc = call_cli(["sample.py", "--pipeline", tmp_path / "rel", "--out", tmp_path / "o"], check=False)
    assert proc.returncode != 0 and "pipeline.json" in proc.stderr
