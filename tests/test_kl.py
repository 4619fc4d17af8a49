"""The continuous KL tokenizer: learns, normalises its latents by measured statistics, loads a diffusers
VAE folder, releases and reconstructs through the CLIs."""
import json

import pytest
import torch
from diffusers import AutoencoderKL

from tests.conftest import TINY_VQ, call_cli, last_json, psnr_baselines
from vistok.data.mnist import MNIST
from vistok.tokenizers.kl import KLAutoencoder

TINY = dict(image_size=32, in_channels=1, block_out_channels=[8, 16], layers_per_block=1, latent_channels=2,
            norm_num_groups=4, mid_attention=False, kl_weight=1e-5, recon_loss="l2")


def _digits(n=32):
    ds = MNIST("train", limit=n)
    return torch.stack([ds[i]["image"] for i in range(n)])


@pytest.mark.slow
def test_kl_autoencoder_fits_a_batch_and_scale_is_invisible_to_reconstruction():
    torch.manual_seed(0)
    m = KLAutoencoder(**TINY)
    x = _digits()
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    with torch.no_grad():
        before = float(m({"image": x})["rec"])
    for _ in range(60):
        out = m({"image": x})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        after = float(torch.nn.functional.mse_loss(m.reconstruct(x)[0], x))
        assert after < 0.5 * before
        stats = m.latent_statistics([{"image": x}])
        plain = m.reconstruct(x)[0]
        m.scale_factor, m.shift_factor = stats["scale_factor"], stats["shift_factor"]
        z = m.encode(x)
        assert abs(float(z.mean())) < 1e-4 and abs(float(z.std(unbiased=False)) - 1) < 1e-3  # normalised latents
        torch.testing.assert_close(m.reconstruct(x)[0], plain, atol=1e-5, rtol=1e-4)  # and the same images


def test_from_diffusers_folder_equals_the_diffusers_vae(tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, scaling_factor=0.2325)
    vae.save_pretrained(str(tmp_path / "vae"), safe_serialization=True)
    m = KLAutoencoder.from_diffusers(str(tmp_path / "vae"), image_size=16)
    assert m.scale_factor == 0.2325 and m.latent_shape == (4, 8, 8)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        ref = vae.encode(x).latent_dist.mean * 0.2325
        torch.testing.assert_close(m.encode(x), ref)
        torch.testing.assert_close(m.decode(ref), vae.decode(ref / 0.2325).sample)


@pytest.mark.slow
def test_kl_release_scale_and_reconstruct_cli(tmp_path):
    run, rel = tmp_path / "run", tmp_path / "rel"
    # 60 steps on 64 digits reach about 17.9 dB on the held-out digits, 4.7 dB over the best input-blind output
    call_cli(["train.py", "--config", "configs/kl/mnist.yaml", "model.block_out_channels=[8,16]", "model.norm_num_groups=4",
              "data.limit=64", "train.max_steps=60", "train.batch_size=16", *[o for o in TINY_VQ if o.startswith("train.")],
              f"train.output_dir={run}"])
    call_cli(["release.py", "--tokenizer", run, "--out", rel])
    stats = last_json(call_cli(["scripts/latent_scale.py", "--tokenizer", rel, "--images", "64", "--write"]))
    cfg = json.loads((rel / "tokenizer" / "config.json").read_text())
    assert cfg["scale_factor"] == stats["scale_factor"] > 0 and cfg["model_type"] == "kl"
    call_cli(["release.py", "--tokenizer", rel, "--out", tmp_path / "rel2"])  # a release reused as is
    assert json.loads((tmp_path / "rel2" / "tokenizer" / "config.json").read_text())["scale_factor"] == stats["scale_factor"]
    assert last_json(call_cli(["sample.py", "--pipeline", rel, "--out", tmp_path / "s", "--num-images", "8"]))["num_images"] == 8
    rec = last_json(call_cli(["evaluate.py", "recon", "--pipeline", rel, "--max-images", "50"]))
    assert rec["num_images"] == 50 and "codebook_usage" not in rec
    held_out = MNIST("test", limit=50)  # the images evaluate.py read: the first 50 of the held-out split
    base = psnr_baselines(torch.stack([held_out[i]["image"] for i in range(50)]))
    # 2 dB over the mean image (13.1 dB here): it reconstructs its input, not an average digit; 4 steps (9.4 dB)
    # or a decoder that ignores the latents fail
    assert rec["psnr"] > max(base.values()) + 2, (rec["psnr"], base)


def test_latent_cache_with_flip(tmp_path):
    from vistok.caches.tokens import TokenDataset
    from vistok.pipelines.base import Pipeline

    torch.manual_seed(0)
    tok = KLAutoencoder(**TINY)
    Pipeline(tokenizer=tok, data={"type": "mnist", "limit": 40}).save_pretrained(str(tmp_path / "rel"))
    ds = TokenDataset(str(tmp_path / "rel"), "train", batch_size=16, chunk=16, flip=True)
    assert ds.key == "latents" and ds.codes.dtype == torch.float32 and ds.codes.shape == (40, 2, 2, 16, 16)
    with torch.no_grad():
        mirrored = ds.tokenizer.encode(_digits(2).flip(-1))  # the release's data: the same first digits
    torch.testing.assert_close(ds.codes[:2, 1], mirrored, atol=1e-5, rtol=1e-4)  # the second variant is the mirror image
    seen = {float(ds[0]["latents"].sum()) for _ in range(20)}
    assert len(seen) == 2  # one of the two per draw
    assert TokenDataset(str(tmp_path / "rel"), "test", batch_size=16).codes.dim() == 4  # no flip off the training split
