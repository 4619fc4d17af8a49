"""Format versions (issue #13): every saved file records vistok_version and a format number; today's formats
load (the committed releases, a format-1 pipeline.json with `stages`), a newer format is refused naming both
versions; `sample.py --pipeline P --help` lists that pipeline's inputs and its components' options."""
import json
import os
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import ROOT, TINY_VQ
from vistok.version import __version__
from vistok.config import ConfigError, load_config, validate
from vistok.modeling import VistokModel
from vistok.pipelines.base import Pipeline


def test_the_committed_releases_load():
    for name, model_type in (("fd_lenet", "lenet"), ("teacher-mnist", "vit_teacher")):
        cfg = json.load(open(os.path.join(ROOT, "checkpoints", name, "config.json")))
        assert "format_version" not in cfg  # written before format numbers: read as format 1
        assert VistokModel.from_pretrained(os.path.join(ROOT, "checkpoints", name)).model_type == model_type


def _tiny_generator_release(path):
    from vistok.generators.ar import ARGenerator
    from vistok.tokenizers.vqgan import VQGAN

    torch.manual_seed(0)
    tok = VQGAN(image_size=16, in_channels=1, ch=8, ch_mult=[1, 2], num_res_blocks=1, z_channels=8, codebook_size=16,
                codebook_dim=4, attn_mid=False)
    gen = ARGenerator(vocab_size=16, token_shape=list(tok.token_shape), num_classes=3, dim=16, depth=1, heads=2)
    Pipeline(tokenizer=tok, generator=gen, data={"type": "mnist", "image_size": 16}).save_pretrained(str(path))
    return tok, gen


def test_format_1_pipeline_json_migrates(tmp_path):
    _tiny_generator_release(tmp_path / "rel")
    meta = json.loads((tmp_path / "rel" / "pipeline.json").read_text())
    assert meta["format_version"] == 2 and meta["pipeline_type"] == "class-to-image" and meta["vistok_version"] == __version__
    old = {"format": "vistok-pipeline", "vistok_version": "0.1.0", "stages": {"tokenizer": "tokenizer", "generator": "generator"},
           "data": meta["data"], "sources": {}}
    shutil.copytree(tmp_path / "rel", tmp_path / "old")
    (tmp_path / "old" / "pipeline.json").write_text(json.dumps(old))
    new, legacy = Pipeline.from_pretrained(str(tmp_path / "rel")), Pipeline.from_pretrained(str(tmp_path / "old"))
    assert type(legacy) is type(new) and legacy.pipeline_type == "class-to-image"
    assert torch.equal(new([0, 2], seed=1), legacy([0, 2], seed=1))


def test_newer_formats_are_refused_naming_both_versions(tmp_path):
    _tiny_generator_release(tmp_path / "rel")
    p = tmp_path / "rel" / "pipeline.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), "format_version": 9, "vistok_version": "9.0"}))
    with pytest.raises(ValueError, match=rf"pipeline format 9 by vistok 9.0; this vistok \({__version__}\) reads formats up to 2"):
        Pipeline.from_pretrained(str(tmp_path / "rel"))
    c = tmp_path / "rel" / "tokenizer" / "config.json"
    c.write_text(json.dumps({**json.loads(c.read_text()), "format_version": 5, "vistok_version": "5.1"}))
    with pytest.raises(ValueError, match=r"model config of format 5 \(vistok 5.1\); .* reads formats up to 1"):
        VistokModel.from_pretrained(str(tmp_path / "rel" / "tokenizer"))
    run_cfg = OmegaConf.create({"model": {"type": "vqgan"}, "data": {"type": "mnist"}, "format_version": 3, "vistok_version": "3.0"})
    with pytest.raises(ConfigError, match=r"a config of format 3 \(vistok 3.0\); .* reads formats up to 2"):
        validate(run_cfg, source="runs/x/config.yaml")


def test_config_format_1_moves_the_adversarial_phase_to_the_model(caplog):
    """Format 1 kept train.disc_start / disc_lr; format 2 gives them to the model's loss module."""
    old = {"model": {"type": "vqgan", "gan_weight": 0.5}, "data": {"type": "mnist"},
           "train": {"disc_start": 7, "disc_lr": 3e-4, "lr": 1e-3}}
    cfg = validate(OmegaConf.create(old), source="runs/old/config.yaml")
    assert (cfg.model.disc_start, cfg.model.disc_lr, cfg.train.lr) == (7, 3e-4, 1e-3)
    assert "disc_start" not in cfg.train and "moved to model" in caplog.text
    no_gan = validate(OmegaConf.create({"model": {"type": "ar"}, "data": {"type": "mnist"}, "train": {"disc_start": -1}}))
    assert "disc_start" not in no_gan.model and "disc_start" not in no_gan.train  # an unused default is dropped
    with pytest.raises(ConfigError, match="unknown key 'train.disc_start'"):  # format 2 has no such key
        validate(OmegaConf.create({**old, "format_version": 2}))


def test_saved_configs_record_version_and_format(tmp_path):
    from vistok.config import save_config

    cfg = load_config(os.path.join(ROOT, "configs/vqgan/mnist.yaml"), TINY_VQ)
    save_config(cfg, str(tmp_path / "config.yaml"))
    saved = OmegaConf.load(tmp_path / "config.yaml")
    assert saved.vistok_version == __version__ and saved.format_version == 2
    assert validate(saved).model.codebook_size == 32  # and it reads back


def test_sample_help_lists_the_pipelines_inputs_and_options(tmp_path, capsys):
    import sample

    _tiny_generator_release(tmp_path / "rel")
    with pytest.raises(SystemExit):
        sample.main(["--pipeline", str(tmp_path / "rel"), "--help"])
    text = capsys.readouterr().out.split("options:", 1)[1]  # after the description's examples
    assert "inputs of a 'class-to-image' pipeline" in text
    for flag in ("--per-class", "--class-labels", "--cfg-scale", "--cfg-schedule", "--top-k", "--top-p", "--temperature",
                 "--no-cache"):
        assert flag in text, flag
    assert "--solver" not in text and "--images " not in text and "--prompts" not in text  # others' options
