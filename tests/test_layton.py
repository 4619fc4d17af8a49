"""Layton (issue #18): the ControlNet branch is a no-op at initialisation and learns to matter; the scheduler
round trip; our few-step walk is diffusers' LCMScheduler walk; decoding is fixed by a seed; the stop-gradient
cuts the graph; both stages lower their losses on a fixed batch with the VQ untouched; train.init_modules fills
the VQ from a vqgan release; LoRA over a UNet read from a folder trains only the adapters; save -> load."""
import pytest
import torch

from vistok.data.shapes import ShapesWorld
from vistok.tokenizers.kl import KLAutoencoder
from vistok.tokenizers.layton import Layton
from vistok.tokenizers.vqgan import VQGAN

VQ = dict(ch=8, ch_mult=[1, 2, 2, 2], num_res_blocks=1, z_channels=16, attn_mid=False, codebook_size=32,
          codebook_dim=8, ema=False)  # 32 px -> 4 x 4 codes


@pytest.fixture(scope="module")
def kl_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("kl")
    KLAutoencoder(image_size=32, in_channels=3, block_out_channels=[8, 16, 16], layers_per_block=1, latent_channels=4,
                  norm_num_groups=4, mid_attention=False).save_pretrained(folder)
    return str(folder)


def tiny(kl_dir, **kw) -> Layton:
    torch.manual_seed(0)
    args = dict(image_size=32, vq=VQ, vae={"type": "vistok_autoencoder", "path": kl_dir}, block_out_channels=[16, 32],
                norm_num_groups=8, cross_attention_dim=16, cond_embedding_channels=[8, 16])
    return Layton(**{**args, **kw})


def images(n: int = 8, seed: int = 0) -> torch.Tensor:
    data = ShapesWorld(split="train", size=n + seed, image_size=32)
    return torch.stack([data[i]["image"] for i in range(seed, seed + n)])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fit(model: Layton, x: torch.Tensor, steps: int, lr: float = 2e-3) -> list[float]:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model({"image": x})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


# ---- the ControlNet branch -------------------------------------------------------------------------------------

def test_the_controlnet_branch_changes_nothing_at_initialisation_then_learns_to(kl_dir):
    m = tiny(kl_dir).eval()
    x = images(8)
    cond = m.code_map(m.encode(x))
    noisy, t = torch.randn(8, *m.latent_shape, generator=gen(1)), torch.linspace(0, 999, 8).long()
    with torch.no_grad():
        down, mid = m.controlnet(noisy, t, controlnet_cond=cond, return_dict=False, **m._context(8, "cpu", noisy.dtype))
        plain = m.unet_model(noisy, t, **m._context(8, "cpu", noisy.dtype)).sample
        assert all(float(r.abs().max()) == 0.0 for r in [*down, mid])  # zero convs, and the zero conv_out
        assert torch.equal(m.predict_noise(noisy, t, cond), plain)
    fit(m, x, 8)
    m.eval()
    with torch.no_grad():
        gap = (m.predict_noise(noisy, t, cond) - m.predict_noise(noisy, t, cond, cond_scale=0.0)).abs().max()
    assert float(gap) > 1e-3  # trained, the code map moves the prediction


# ---- the scheduler and the few-step walk ----------------------------------------------------------------------

def test_add_noise_then_the_x0_prediction_from_the_true_noise_recovers_x0(kl_dir):
    m = tiny(kl_dir)
    x0, eps = torch.randn(4, 4, 8, 8, generator=gen(0)), torch.randn(4, 4, 8, 8, generator=gen(1))
    for t in (0, 124, 499, 999):
        noisy = m.noise_scheduler.add_noise(x0, eps, torch.full((4,), t))
        assert torch.allclose(m.x0_from_noise(noisy, eps, t), x0, atol=1e-4), t
        again = m.noise_scheduler.add_noise(x0, torch.randn(x0.shape, generator=gen(7)), torch.tensor([t]))
        assert torch.allclose(m.renoise(x0, t, gen(7)), again, atol=1e-6)  # fresh noise from the caller's generator


def test_the_consistency_walk_is_diffusers_lcm_scheduler_at_lactoks_timesteps(kl_dir):
    from diffusers import LCMScheduler
    from vistok.parts.sd import quiet_diffusers

    m = tiny(kl_dir).eval()
    fit(m, images(8), 3)  # a model whose prediction depends on its inputs
    m.eval()
    cond = m.code_map(m.encode(images(4)))
    with torch.no_grad():
        ours = m.consistency_walk(cond, 3, gen(5))[0]
        sched = LCMScheduler.from_config(m.noise_scheduler.config)
        with quiet_diffusers():
            sched.set_timesteps(timesteps=[999, 499, 124])
        g = gen(5)
        x = torch.randn((4, *m.latent_shape), generator=g)
        for t in sched.timesteps:
            out = sched.step(m.predict_noise(x, t, cond), t, x, generator=g)
            x = out.prev_sample
    assert [int(t) for t in sched.timesteps] == [999, 499, 124]
    # LCM's boundary scalings at t = 124 are c_skip = 1.6e-7, c_out = 1 - 8e-8: the same walk
    assert torch.allclose(ours, out.denoised, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sampler,steps", [("consistency", 2), ("ddim", 3)])
def test_decoding_is_fixed_by_the_seed(kl_dir, sampler, steps):
    m = tiny(kl_dir).eval()
    codes = m.encode(images(4))
    a = m.decode(codes, generator=gen(3), decode_sampler=sampler, decode_steps=steps)
    b = m.decode(codes, generator=gen(3), decode_sampler=sampler, decode_steps=steps)
    c = m.decode(codes, generator=gen(4), decode_sampler=sampler, decode_steps=steps)
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)


def test_the_stop_gradient_cuts_the_graph_before_the_last_step(kl_dir):
    m = tiny(kl_dir, stage=2).train()
    cond = m.code_map(m.encode(images(4)))
    for steps in (1, 3):
        x0, last_input = m.consistency_walk(cond, steps, gen(0), grad_last=True)
        assert last_input.grad_fn is None and not last_input.requires_grad
        assert x0.grad_fn is not None
    m.zero_grad()
    x0.square().mean().backward()
    # the zero convs get gradients at initialisation (what they multiply is not zero), the UNet too
    assert float(m.controlnet.controlnet_mid_block.weight.grad.abs().sum()) > 0
    assert float(m.unet_model.conv_in.weight.grad.abs().sum()) > 0
    with torch.no_grad():  # decoding keeps no graph at all
        assert m.consistency_walk(cond, 3, gen(0))[0].grad_fn is None


# ---- training ----------------------------------------------------------------------------------------------------

def test_stage_one_then_stage_two_lower_their_losses_and_leave_the_vq_alone(kl_dir):
    m = tiny(kl_dir)
    x = images(8)
    vq_before = {k: v.clone() for k, v in m.vq.state_dict().items()}
    codes = m.encode(x)
    before = m.evaluate([{"image": x}])
    fit(m, x, 30)
    after = m.evaluate([{"image": x}])
    assert after["eps_mse"] < 0.6 * before["eps_mse"], (before, after)
    m.stage = 2

    def l1() -> float:
        m.eval()
        return float((m.decode(codes, generator=torch.Generator().manual_seed(9), decode_steps=3) - x).abs().mean())

    start = l1()
    losses = fit(m, x, 25, lr=3e-3)
    assert l1() < 0.9 * start, (start, l1(), losses[-5:])  # a random VAE decoder: about 0.9 -> 0.73
    assert all(torch.equal(v, m.vq.state_dict()[k]) for k, v in vq_before.items())
    assert torch.equal(m.encode(x), codes) and not any(p.requires_grad for p in m.vq.parameters())


def test_init_modules_fills_the_vq_from_a_vqgan_release(kl_dir, tmp_path):
    from vistok.loading import init_module

    torch.manual_seed(3)
    vqgan = VQGAN(image_size=32, in_channels=3, l2_norm=True, **{k: v for k, v in VQ.items() if k != "l2_norm"})
    vqgan.save_pretrained(tmp_path / "vq")
    m = tiny(kl_dir)
    unused = init_module(m, "vq", str(tmp_path / "vq"))
    assert unused == ["decoder", "post_quant_conv"]
    src = vqgan.state_dict()
    assert all(torch.equal(v, src[k]) for k, v in m.vq.state_dict().items())
    x = images(4)
    assert torch.equal(m.encode(x), vqgan.eval().encode(x))  # the same codes as the release's own
    other = tiny(kl_dir, vq={**VQ, "codebook_size": 64})
    with pytest.raises(ValueError, match="shape mismatches .*quantizer"):
        init_module(other, "vq", str(tmp_path / "vq"))
    with pytest.raises(ValueError, match="'vqq' is not a submodule of Layton"):
        init_module(m, "vqq", str(tmp_path / "vq"))


def test_save_then_load_decodes_the_same_images(kl_dir, tmp_path):
    m = tiny(kl_dir, stage=2).eval()
    codes = m.encode(images(4))
    m.save_pretrained(tmp_path / "layton")
    back = Layton.from_pretrained(str(tmp_path / "layton")).eval()
    assert back.stage == 2 and torch.equal(back.encode(images(4)), codes)
    assert torch.equal(back.decode(codes, generator=gen(1)), m.decode(codes, generator=gen(1)))
    assert not any(k.startswith("vae.") for k in m.state_dict())  # the frozen VAE stays in its folder


def test_bad_settings_are_named(kl_dir):
    with pytest.raises(ValueError, match="stage=3"):
        tiny(kl_dir, stage=3)
    with pytest.raises(ValueError, match="consistency_timesteps \\[499, 999\\] must fall"):
        tiny(kl_dir, consistency_timesteps=[499, 999])
    with pytest.raises(ValueError, match="decode_steps 4: at most 3 steps"):
        tiny(kl_dir, decode_steps=4)
    with pytest.raises(ValueError, match="model.vq: .*unexpected keyword argument 'chh'"):
        tiny(kl_dir, vq={**VQ, "chh": 3})
    with pytest.raises(ValueError, match="model.vae is required"):
        tiny(kl_dir, vae=None)


# ---- LoRA over a UNet read from a folder ---------------------------------------------------------------------------

def test_lora_over_a_folder_unet_trains_and_saves_only_the_adapters(kl_dir, tmp_path):
    from vistok.nn.unet import small_unet

    torch.manual_seed(0)
    small_unet("test", 8, 4, 4, [16, 32], 1, [1], 4, 8, 16).save_pretrained(tmp_path / "unet")
    spec = {"type": "unet2d_condition", "path": str(tmp_path / "unet"), "lora": {"r": 4}}
    m = tiny(kl_dir, unet=spec)
    base = {k: v.clone() for k, v in m.unet.model.state_dict().items() if ".lora_" not in k}
    saved = [k for k in m.state_dict() if k.startswith("unet.")]
    assert saved and all(".lora_" in k for k in saved)
    assert all(not p.requires_grad for n, p in m.unet.named_parameters() if ".lora_" not in n)
    assert "conv1" in " ".join(saved) and "time_emb_proj" in " ".join(saved)  # LaCToK's targets, convs included
    fit(m, images(8), 3)
    after = m.unet.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in base.items())
    assert any(float(v.abs().sum()) > 0 for k, v in after.items() if "lora_B" in k)  # lora_B starts at zero
    m.save_pretrained(tmp_path / "layton")
    back = Layton.from_pretrained(str(tmp_path / "layton"))
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in m.state_dict().items())


# ---- paper scale ----------------------------------------------------------------------------------------------------

def test_the_paper_config_builds_on_meta_with_lactoks_layout():
    import os

    from vistok.config import build, load_config

    sdxl = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "layton", "sdxl")
    cfg = load_config("configs/layton/paper_stage1.yaml", [f"model.vae.path={sdxl}", f"model.unet.path={sdxl}"])
    with torch.device("meta"):  # the SDXL hyperparameters only (configs/layton/sdxl), no weights
        m = build("model", cfg.model)
    assert m.token_shape == (16, 16) and m.latent_shape == (4, 128, 128) and m.vq.image_size == 256
    assert sum(p.numel() for p in m.unet.model.parameters() if not p.requires_grad) == 2_567_463_684  # SDXL's UNet
    emb = m.controlnet.controlnet_cond_embedding  # LaCToK's stride-1 embedding: 8 -> 8, (8, 8, 32), (32, 32, 96), ...
    assert tuple(emb.conv_in.weight.shape) == (8, 8, 3, 3) and tuple(emb.conv_out.weight.shape) == (320, 256, 3, 3)
    assert [tuple(b.weight.shape[:2]) for b in emb.blocks] == [(8, 8), (32, 8), (32, 32), (96, 32), (96, 96), (256, 96)]
    assert all(b.stride == (1, 1) for b in [emb.conv_in, *emb.blocks, emb.conv_out])
    trained = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("controlnet.") or ".lora_" in n for n in trained)
    lora = [n for n in trained if ".lora_" in n]
    assert any("conv_shortcut.lora_A" in n for n in lora) and any("upsamplers.0.conv.lora_B" in n for n in lora)
    assert any("time_emb_proj.lora_A" in n for n in lora) and any("ff.net.2.lora_A" in n for n in lora)
    r = {m.get_parameter(n).shape[0] for n in lora if ".lora_A." in n}
    assert r == {64} and m.unet.lora["alpha"] == 8
    assert not any(k.startswith(("vae.", "unet.")) and ".lora_" not in k for k in m.state_dict())
