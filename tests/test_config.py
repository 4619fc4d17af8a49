"""Config loading: overrides, defaults, and errors that name the key, file and expectation."""
import glob
import os

import pytest
import torch

from vistok.config import ConfigError, build, load_config
from tests.conftest import ROOT

MNIST = os.path.join(ROOT, "configs/vqgan/mnist.yaml")


def test_overrides_and_defaults():
    cfg = load_config(MNIST, ["train.max_steps=7", "model.ch_mult=[1,2]", "train.mixed_precision=no"])
    assert cfg.train.max_steps == 7 and list(cfg.model.ch_mult) == [1, 2] and cfg.train.mixed_precision == "no"
    assert cfg.train.output_dir == os.path.join("runs", "mnist")  # default from the file name
    assert cfg.eval.lenet == "checkpoints/fd_lenet"  # schema default filled in


@pytest.mark.parametrize("overrides, needle", [
    (["train.max_stepz=3"], "unknown key 'train.max_stepz'"),
    (["train.max_steps=abc"], "'train.max_steps' = 'abc'; expected an integer"),
    (["train.lr=fast"], "'train.lr' = 'fast'; expected a number"),
    (["model.codebook_sise=3"], "unknown key 'codebook_sise' for model 'vqgan'"),
    (["model.ch=1.5"], "'model.ch' = 1.5; expected an integer"),
    (["model.type=vqgann"], "unknown model type 'vqgann'"),
    (["data.type=mnistt"], "unknown dataset type 'mnistt'"),
    (["data.split=test"], "unknown key 'split'"),
    (["train.mixed_precision=fp8"], "expected one of ('no', 'bf16', 'fp16')"),
    (["train.max_steps"], "expected key.sub=value"),
])
def test_errors_name_key_and_file(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(MNIST, overrides)
    assert needle in str(e.value)
    assert "mnist.yaml" in str(e.value)
    if "=" in overrides[0]:  # a key given on the command line is blamed on the command line, not the file
        assert f"command-line override '{overrides[0]}'" in str(e.value) and "(YAML file)" not in str(e.value)


def test_a_bad_key_in_the_file_is_blamed_on_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {type: vqgan, codebook_size: 0}\ndata: {type: mnist}\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad, ["train.max_steps=3"])
    assert str(e.value).startswith(f"{bad} (YAML file): 'model.codebook_size' = 0; expected a value in [1, inf)")


def test_missing_file_and_section(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {type: vqgan}\ntrain: {max_steps: 1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml \(YAML file\): missing section 'data'"):
        load_config(bad)
    bad.write_text("model: {type: vqgan}\ndata: {type: mnist}\nmodle: {}\n")
    with pytest.raises(ConfigError, match=r"unknown top-level key\(s\) \['modle'\]"):
        load_config(bad)


VISTOK_CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
                        if "/accelerate/" not in p)  # accelerate's launcher files: tests/test_scaleout.py


def tiny_part_folders(cfg, tmp_path) -> list[str]:
    """Overrides pointing a paper config's pretrained parts at tiny folders of the same class and geometry (the
    users' copies of CLIP / SigLIP / ViTamin / BLIP-2 are not here). Parts a model reads lazily (teachers, targets)
    and in-project folders (``vistok``) need none."""
    from tests import tiny_hf

    out = []
    for key, spec in cfg.model.items():
        if not (hasattr(spec, "keys") and "path" in spec):
            continue
        folder, size, grid = str(tmp_path / key), cfg.model.get("image_size"), (cfg.model.get("scales") or [0])[-1]
        if spec.type.startswith("blip2_"):  # on the meta device only the config is read
            from transformers import Blip2Config

            Blip2Config(image_text_hidden_size=256, qformer_config={"use_qformer_text_input": True}).save_pretrained(folder)
        elif spec.type == "stable_unclip":  # SEED's decoder: test_parts_sd's tiny pipeline (16-d embeddings)
            from tests.test_parts_sd import EMBED, tiny_unclip
            from vistok.parts.sd import quiet_diffusers

            with quiet_diffusers():
                tiny_unclip().save_pretrained(folder)
            out.append(f"model.embed_dim={EMBED}")
        elif spec.type == "causal_lm":  # SEED-LLaMA's LM: its config (Vicuna-7B's sizes) and a tokenizer
            tiny_hf.llama_config_folder(folder)
        elif spec.type == "vistok_autoencoder":  # Layton's CPU latent space: a tiny kl of the config's geometry
            from vistok.tokenizers.kl import KLAutoencoder

            KLAutoencoder(image_size=size, in_channels=cfg.model.get("in_channels", 3), block_out_channels=[8, 16, 16],
                          layers_per_block=1, latent_channels=4, norm_num_groups=4,
                          mid_attention=False).save_pretrained(folder)
        elif spec.type in ("autoencoder_kl", "unet2d_condition"):  # Layton's SDXL: its committed hyperparameters
            out.append(f"model.{key}.path={os.path.join(ROOT, 'configs', 'layton', 'sdxl')}")
            continue
        elif not grid or spec.type == "vistok":
            continue
        elif spec.type.startswith("clip_vision"):
            tiny_hf.clip_vision(folder, image_size=size, patch=size // grid, hidden=48)
        elif spec.type == "siglip_vision":
            tiny_hf.siglip_vision(folder, image_size=grid * 14, patch=14, hidden=48)
        elif spec.type == "timm":
            tiny_hf.timm_vit(folder, image_size=size, patch=size // grid, dim=48)
        out.append(f"model.{key}.path={folder}")
    return out


@pytest.mark.parametrize("path", VISTOK_CONFIGS)
def test_every_config_loads_and_builds_on_meta(path, tmp_path):
    cfg = load_config(path, tiny_part_folders(load_config(path), tmp_path))
    with torch.device("meta"):  # pretrained parts read only their folders' configs on meta
        model = build("model", cfg.model)
    assert sum(p.numel() for p in model.parameters()) > 0
