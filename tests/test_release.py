"""Release format: run -> pipeline folder -> from_pretrained equals the original; wrong types and bad files."""
import json
import os

import pytest
import torch

from vistok.config import build, load_config
from vistok.classifiers.lenet import LeNet
from vistok.modeling import VistokModel
from vistok.pipelines.base import Pipeline
from vistok.pipelines.release import release
from vistok.tokenizers.vqgan import VQGAN
from vistok.training.trainer import train
from tests.conftest import ROOT, TINY_VQ

MNIST = os.path.join(ROOT, "configs/vqgan/mnist.yaml")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = load_config(MNIST, TINY_VQ + ["data.limit=64", "train.max_steps=6", "train.checkpoint_every=3",
                                        "train.ema_decay=0.5", f"train.output_dir={out}"])
    train(cfg)
    return str(out)


def test_release_round_trip_equals_original(trained_run, tmp_path):
    from vistok.loading import model_from_run

    original, _, info = model_from_run(trained_run)
    assert info["ema"] and info["step"] == 6
    rel = tmp_path / "rel"
    release(str(rel), tokenizer=trained_run)
    meta = json.loads((rel / "pipeline.json").read_text())
    assert meta["components"] == {"tokenizer": {"path": "tokenizer", "model_type": "vqgan"}} and meta["data"]["type"] == "mnist"
    assert meta["pipeline_type"] == "reconstruction" and meta["format_version"] == 2
    cfg = json.loads((rel / "tokenizer" / "config.json").read_text())
    assert cfg["model_type"] == "vqgan" and cfg["codebook_size"] == 32
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    loaded = VQGAN.from_pretrained(str(rel / "tokenizer"))
    generic = VistokModel.from_pretrained(str(rel / "tokenizer"))
    pipe = Pipeline.from_pretrained(str(rel))
    with torch.no_grad():
        ref_codes = original.encode(x)
        assert torch.equal(loaded.encode(x), ref_codes) and torch.equal(generic.encode(x), ref_codes)
        assert torch.equal(loaded.decode(ref_codes), original.decode(ref_codes))
        assert torch.equal(pipe.reconstruct(x), original.reconstruct(x)[0].clamp(-1, 1))
    assert isinstance(generic, VQGAN)
    assert (rel / "README.md").read_text().count("vqgan") >= 1


def test_ema_weights_differ_from_live(trained_run):
    from vistok.loading import model_from_run

    ema, _, _ = model_from_run(trained_run)
    live, _, _ = model_from_run(trained_run, use_ema=False)
    assert any(not torch.equal(a, b) for a, b in zip(ema.parameters(), live.parameters()))


def test_wrong_model_type_and_bad_files(trained_run, tmp_path):
    rel = tmp_path / "rel"
    release(str(rel), tokenizer=trained_run)
    with pytest.raises(ValueError, match="holds a 'vqgan' model .* expected model_type 'lenet'"):
        LeNet.from_pretrained(str(rel / "tokenizer"))
    LeNet().save_pretrained(str(tmp_path / "lenet"))
    meta = json.loads((rel / "pipeline.json").read_text())
    os.rename(rel / "tokenizer", rel / "tok_old")
    os.rename(tmp_path / "lenet", rel / "tokenizer")
    with pytest.raises(ValueError, match="component 'tokenizer' should be a 'vqgan', .* holds a 'lenet'"):
        Pipeline.from_pretrained(str(rel))
    (rel / "pipeline.json").write_text(json.dumps({**meta, "components": {"tokenizer": {"path": "tokenizer", "model_type": "lenet"}}}))
    with pytest.raises(ValueError, match=r"a 'lenet' model \(classifier\) cannot be the 'tokenizer' component"):
        Pipeline.from_pretrained(str(rel))
    (rel / "pipeline.json").write_text(json.dumps(meta))
    os.rename(rel / "tokenizer", tmp_path / "lenet")
    os.rename(rel / "tok_old", rel / "tokenizer")
    # truncated safetensors
    w = rel / "tokenizer" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        Pipeline.from_pretrained(str(rel))
    # shapes that do not match the config
    release(str(rel), tokenizer=trained_run, overwrite=True)
    c = json.loads((rel / "tokenizer" / "config.json").read_text())
    c["codebook_size"] = 64
    (rel / "tokenizer" / "config.json").write_text(json.dumps(c))
    with pytest.raises(ValueError, match="has shape .* the config expects"):
        VQGAN.from_pretrained(str(rel / "tokenizer"))
    with pytest.raises(FileNotFoundError, match="pipeline.json is missing"):
        Pipeline.from_pretrained(str(tmp_path))
    del c["model_type"]
    (rel / "tokenizer" / "config.json").write_text(json.dumps(c))
    with pytest.raises(ValueError, match="missing required key 'model_type'"):
        VQGAN.from_pretrained(str(rel / "tokenizer"))
    assert meta["format"] == "vistok-pipeline"


def test_tokenizer_only_pipeline_refuses_generation(trained_run, tmp_path):
    release(str(tmp_path / "rel"), tokenizer=trained_run)
    with pytest.raises(ValueError, match="no generator stage"):
        Pipeline.from_pretrained(str(tmp_path / "rel"))(class_labels=[1])


def test_build_matches_config(trained_run):
    cfg = load_config(os.path.join(trained_run, "config.yaml"))
    assert isinstance(build("model", cfg.model), VQGAN)
