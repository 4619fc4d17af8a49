"""vistok.parts.sd: diffusers parts (autoencoder_kl, unet2d_condition, stable_unclip) read from tiny randomly
initialised models saved with save_pretrained (nothing is downloaded)."""
import json
import os
import shutil

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from vistok.parts.base import build_part  # noqa: E402
from vistok.parts.sd import quiet_diffusers  # noqa: E402
from vistok.registry import lookup  # noqa: E402

WEIGHTS = "diffusion_pytorch_model.safetensors"
EMBED = 16  # the tiny unCLIP's CLIP width and projection


def tiny_vae(**kw) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                         layers_per_block=1, sample_size=32, **kw).eval()


def tiny_unet(**kw) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                cross_attention_dim=EMBED, norm_num_groups=8, attention_head_dim=(2, 4), **kw).eval()


def save(model, folder) -> str:
    with quiet_diffusers():
        model.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    return save(tiny_vae(), tmp_path_factory.mktemp("vae"))


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    return save(tiny_unet(), tmp_path_factory.mktemp("unet"))


def images(n=2, c=3, size=32, seed=1):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def assert_loaded(model: torch.nn.Module, folder: str, file: str = WEIGHTS):
    saved = load_file(os.path.join(folder, file))
    own = model.state_dict()
    assert set(own) == set(saved)
    for k, v in saved.items():
        assert torch.equal(own[k], v), k


# ---- autoencoder_kl ---------------------------------------------------------------------------------------------

def test_autoencoder_kl_matches_diffusers(vae_dir):
    part = build_part({"type": "autoencoder_kl", "path": vae_dir}, "vae")
    ref = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True).eval().requires_grad_(False)
    assert_loaded(part.model, vae_dir)
    assert (part.latent_channels, part.downsample, part.scaling_factor) == (4, 2, ref.config.scaling_factor)
    x = images()
    with torch.no_grad():
        latents = part.encode(x)
        assert latents.shape == (2, 4, 16, 16)
        assert torch.equal(latents, ref.encode(x).latent_dist.mean * ref.config.scaling_factor)
        assert torch.equal(part.decode(latents), ref.decode(latents / ref.config.scaling_factor).sample)
        grey = x[:, :1]
        assert torch.equal(part.encode(grey), part.encode(grey.expand(-1, 3, -1, -1)))


def test_autoencoder_kl_subfolder_sample_and_shift(tmp_path):
    save(tiny_vae(shift_factor=0.25, scaling_factor=0.5), tmp_path / "sd" / "vae")
    part = build_part({"type": "autoencoder_kl", "path": str(tmp_path / "sd"), "subfolder": "vae", "sample": True},
                      "vae")
    assert part.folder() == str(tmp_path / "sd" / "vae") and part.spec()["subfolder"] == "vae"
    assert part.spec()["sample"] is True and part.fingerprint
    ref = AutoencoderKL.from_pretrained(str(tmp_path / "sd"), subfolder="vae", local_files_only=True)
    ref.eval().requires_grad_(False)
    x = images(1)
    with torch.no_grad():
        z = ref.encode(x).latent_dist.sample(torch.Generator().manual_seed(3))
        latents = part.encode(x, generator=torch.Generator().manual_seed(3))
        assert torch.equal(latents, (z - 0.25) * 0.5)
        # (z - shift) * scale and back is exact only to fp32 rounding (~1e-7), which the decoder amplifies
        assert torch.allclose(part.decode(latents), ref.decode(z).sample, atol=1e-5)


def test_autoencoder_kl_without_weights_builds_from_config(vae_dir):
    part = lookup("part", "autoencoder_kl")(path=vae_dir)
    part.config_key = "vae"
    part.load(vae_dir, read_weights=False)
    saved = load_file(os.path.join(vae_dir, WEIGHTS))
    own = part.model.state_dict()
    assert {k: v.shape for k, v in own.items()} == {k: v.shape for k, v in saved.items()}
    assert not all(torch.equal(own[k], v) for k, v in saved.items())


# ---- unet2d_condition -------------------------------------------------------------------------------------------

def test_unet2d_condition_matches_diffusers(unet_dir):
    part = build_part({"type": "unet2d_condition", "path": unet_dir}, "unet")
    ref = UNet2DConditionModel.from_pretrained(unet_dir, local_files_only=True).eval().requires_grad_(False)
    assert_loaded(part.model, unet_dir)
    assert (part.in_channels, part.cross_attention_dim, part.sample_size) == (4, EMBED, 8)
    g = torch.Generator().manual_seed(0)
    sample, context = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, EMBED, generator=g)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        out = part(sample, t, context)
        assert out.shape == sample.shape
        assert torch.equal(out, ref(sample, t, encoder_hidden_states=context).sample)


# ---- frozen / fine-tuned, errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["autoencoder_kl", "unet2d_condition"])
def test_frozen_and_fine_tuned(kind, vae_dir, unet_dir):
    folder = vae_dir if kind == "autoencoder_kl" else unet_dir
    frozen = build_part({"type": kind, "path": folder}, "p")
    assert not any(p.requires_grad for p in frozen.parameters()) and frozen.state_dict() == {}
    assert not frozen.train().training
    tuned = build_part({"type": kind, "path": folder, "frozen": False}, "p")
    assert all(p.requires_grad for p in tuned.parameters())
    assert set(tuned.state_dict()) == {f"model.{k}" for k in load_file(os.path.join(folder, WEIGHTS))}
    assert tuned.train().training


@pytest.mark.parametrize("kind, cls", [("autoencoder_kl", "AutoencoderKL"),
                                       ("unet2d_condition", "UNet2DConditionModel")])
def test_missing_folder_names_key_and_path(kind, cls, tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=rf"part 'vae'.*\({cls}\).*'{missing}' does not exist"):
        build_part({"type": kind, "path": missing}, "vae")


def test_wrong_model_folder(vae_dir, unet_dir):
    with pytest.raises(ValueError, match=r"part 'vae'.*holds a UNet2DConditionModel.*expected a AutoencoderKL"):
        build_part({"type": "autoencoder_kl", "path": unet_dir}, "vae")
    with pytest.raises(ValueError, match=r"part 'unet'.*holds a AutoencoderKL.*expected a UNet2DConditionModel"):
        build_part({"type": "unet2d_condition", "path": vae_dir}, "unet")


def test_missing_or_reshaped_weights(vae_dir, tmp_path):
    state = load_file(os.path.join(vae_dir, WEIGHTS))
    bad = shutil.copytree(vae_dir, tmp_path / "bad")
    save_file({k: v for k, v in state.items() if k != "decoder.conv_in.bias"}, str(bad / WEIGHTS))
    with pytest.raises(ValueError, match=r"part 'vae'.*AutoencoderKL: 1 missing \['decoder.conv_in.bias'\]"):
        build_part({"type": "autoencoder_kl", "path": str(bad)}, "vae")
    save_file({**state, "decoder.conv_in.bias": torch.zeros(3)}, str(bad / WEIGHTS))
    with pytest.raises(ValueError, match=r"part 'vae'.*cannot load AutoencoderKL.*decoder.conv_in.bias"):
        build_part({"type": "autoencoder_kl", "path": str(bad)}, "vae")
    os.remove(bad / WEIGHTS)
    with pytest.raises(ValueError, match=r"part 'vae'.*cannot load AutoencoderKL from '.*bad'"):
        build_part({"type": "autoencoder_kl", "path": str(bad)}, "vae")


# ---- stable_unclip ----------------------------------------------------------------------------------------------

def tiny_clip_tokenizer():
    """A CLIP tokenizer over single bytes (no merges): what the hub's tiny-random-clip is for these tests."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_unclip():
    """The components of diffusers' own StableUnCLIPImg2ImgPipeline fast tests, smaller."""
    from diffusers import DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=EMBED, projection_dim=EMBED, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        intermediate_size=24, patch_size=4))
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=EMBED, projection_dim=EMBED, intermediate_size=24, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=len(tokenizer)))
    components = {
        "feature_extractor": CLIPImageProcessor(crop_size=32, size=32),
        "image_encoder": image_encoder.eval(),
        "image_normalizer": StableUnCLIPImageNormalizer(embedding_dim=EMBED).eval(),
        "image_noising_scheduler": DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        "tokenizer": tokenizer,
        "text_encoder": text_encoder.eval(),
        "unet": tiny_unet(class_embed_type="projection", projection_class_embeddings_input_dim=2 * EMBED,
                          upcast_attention=True, use_linear_projection=True),
        "scheduler": DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                   prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1),
        "vae": tiny_vae(),
    }
    return StableUnCLIPImg2ImgPipeline(**components)


@pytest.fixture(scope="module")
def unclip_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("unclip"))
    with quiet_diffusers():
        tiny_unclip().save_pretrained(folder)
    return folder


def reference_pipeline(folder):
    from diffusers import StableUnCLIPImg2ImgPipeline

    with quiet_diffusers():
        pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    for module in pipe.components.values():  # frozen like the part: CPU kernels differ with requires_grad (~1e-6)
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
    return pipe


def test_stable_unclip_matches_pipeline(unclip_dir):
    part = build_part({"type": "stable_unclip", "path": unclip_dir}, "unclip")
    ref = reference_pipeline(unclip_dir)
    for name in ("image_encoder", "text_encoder"):
        assert_loaded(getattr(part, name), os.path.join(unclip_dir, name), "model.safetensors")
    for name in ("image_normalizer", "unet", "vae"):
        assert_loaded(getattr(part, name), os.path.join(unclip_dir, name))
    x = images(2, size=32)
    with torch.no_grad():
        embeds = part.image_embeds(x)
        pixels = ref.feature_extractor(images=list(((x + 1) / 2).permute(0, 2, 3, 1).numpy()), do_rescale=False,
                                       return_tensors="pt").pixel_values
        assert embeds.shape == (2, EMBED)
        assert torch.allclose(embeds, ref.image_encoder(pixel_values=pixels).image_embeds, atol=1e-5)
    out = part.generate(embeds, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    want = ref(image_embeds=embeds, prompt=["", ""], num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="pt").images
    assert out.shape == (2, 3, 16, 16) and out.min() >= -1 and out.max() <= 1
    assert torch.equal(out, want * 2 - 1)


def test_stable_unclip_frozen_fine_tuned_and_rebuilt(unclip_dir, tmp_path):
    frozen = build_part({"type": "stable_unclip", "path": unclip_dir}, "unclip")
    assert not any(p.requires_grad for p in frozen.parameters()) and frozen.state_dict() == {}
    assert "pipe" not in dict(frozen.named_children())
    assert frozen.fingerprint == frozen.folder_fingerprint()  # the subfolders' weights
    assert len(frozen.folder_fingerprint()) == 16
    tuned = build_part({"type": "stable_unclip", "path": unclip_dir, "frozen": False}, "unclip")
    assert all(p.requires_grad for p in tuned.parameters())
    state = tuned.state_dict()
    assert {k.split(".")[0] for k in state} == {"image_encoder", "image_normalizer", "text_encoder", "unet", "vae"}
    # a fine-tuned pipeline saved by its owner: the configs under parts/<key>/, the weights from the owner's file
    tuned.save_configs(str(tmp_path / "parts"))
    assert not any(f.endswith(".safetensors") for _, _, fs in os.walk(tmp_path / "parts") for f in fs)
    rebuilt = lookup("part", "stable_unclip")(path=unclip_dir, frozen=False)
    rebuilt.config_key = "unclip"
    rebuilt.load(str(tmp_path / "parts"), read_weights=False)
    rebuilt.load_state_dict(state)
    emb = torch.randn(1, EMBED, generator=torch.Generator().manual_seed(2))
    run = dict(num_inference_steps=2, guidance_scale=3.0)
    assert torch.equal(rebuilt.generate(emb, generator=torch.Generator().manual_seed(0), **run),
                       tuned.generate(emb, generator=torch.Generator().manual_seed(0), **run))


def test_stable_unclip_wrong_folders(unclip_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"part 'unclip'.*StableUnCLIPImg2ImgPipeline.*no model_index.json"):
        build_part({"type": "stable_unclip", "path": os.path.join(unclip_dir, "unet")}, "unclip")
    other = tmp_path / "sd"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match=r"'unclip'.*holds a StableDiffusionPipeline.*a StableUnCLIPImg2ImgPipeline"):
        build_part({"type": "stable_unclip", "path": str(other)}, "unclip")
    broken = shutil.copytree(unclip_dir, tmp_path / "broken")
    os.remove(broken / "unet" / WEIGHTS)
    with pytest.raises(ValueError, match=r"part 'unclip'.*cannot load UNet2DConditionModel from '.*broken/unet'"):
        build_part({"type": "stable_unclip", "path": str(broken)}, "unclip")
