"""SEED's image decoder (``unclip_decoder``, issue #16 item 3) and its codes <-> images pipeline (``seed``): a tiny
UNet decoder trained on a tiny frozen teacher's embeddings, its sampling and guidance, what it saves, the
pipeline over a fake SEED tokenizer (the real one is ``vistok/tokenizers/seed.py``), sample.py, and the
paper-scale mode over a tiny StableUnCLIPImg2ImgPipeline folder."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

pytest.importorskip("diffusers")

from tests.conftest import ROOT, call_cli, last_json  # noqa: E402
from vistok.data.shapes import ShapesWorld  # noqa: E402
from vistok.modeling import VistokModel  # noqa: E402
from vistok.parts.folders import fingerprint  # noqa: E402
from vistok.pipelines.base import Pipeline  # noqa: E402
from vistok.registry import lookup, register_model  # noqa: E402
from vistok.schema import PosInt  # noqa: E402
from vistok.tokenizers.base import Tokenizer  # noqa: E402
from vistok.tokenizers.unclip_decoder import UnCLIPDecoder  # noqa: E402

E = 16  # the tiny teacher's embedding width = the fake tokenizer's gen_dim
TINY = dict(embed_dim=E, image_size=32, in_channels=3, block_out_channels=[16, 32], attn_levels=[1],
            attention_heads=2, cross_attention_dim=16, cond_tokens=2, sample_steps=3, guidance_scale=3.0, eval_steps=2)
SHAPES = {"type": "shapes", "image_size": 32, "size": 64, "max_objects": 2}


@register_model("fake_seed_tokenizer")
class FakeSeedTokenizer(Tokenizer):
    """The interface of SEED's tokenizer, nothing more: images -> B x Q codes (from the mean colour of each
    horizontal band), codes -> a B x gen_dim generation embedding (mean of per-code vectors)."""

    def __init__(self, num_queries: PosInt = 4, codebook_size: PosInt = 8, gen_dim: PosInt = E):
        super().__init__()
        self.num_queries, self.codebook_size, self.gen_dim = num_queries, codebook_size, gen_dim
        self.score = nn.Linear(3, codebook_size)
        self.table = nn.Embedding(codebook_size, gen_dim)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        bands = images.unflatten(2, (self.num_queries, -1)).mean((3, 4)).transpose(1, 2)  # B,Q,3
        return self.score(bands).argmax(-1)

    def generation_embedding(self, codes: torch.Tensor) -> torch.Tensor:
        return self.table(codes).mean(1)


def shapes_batch(n=8, split="test"):
    data = ShapesWorld(split, image_size=32, size=max(n, 8), max_objects=2)
    return torch.stack([data[i]["image"] for i in range(n)])


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    torch.manual_seed(0)
    teacher = lookup("model", "vit_teacher")(image_size=32, in_channels=3, patch=8, dim=E, depth=1, heads=2, proj_dim=8)
    folder = str(tmp_path_factory.mktemp("teacher"))
    teacher.save_pretrained(folder)
    return folder


def tiny_decoder(teacher_dir, seed=0, **kw):
    torch.manual_seed(seed)
    return UnCLIPDecoder(**{**TINY, "embedder": {"type": "vistok", "path": teacher_dir}, **kw})


@pytest.fixture(scope="module")
def decoder(teacher_dir):
    dec = tiny_decoder(teacher_dir)
    with torch.no_grad():  # a learnt null embedding, as after training (so that guidance changes the images)
        dec.null_embedding.normal_(generator=torch.Generator().manual_seed(5))
    return dec.eval()


def embeds(n=2, seed=3):
    return torch.randn(n, E, generator=torch.Generator().manual_seed(seed))


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---- sampling ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver"])
def test_generate_is_deterministic_for_a_seed_and_changes_with_it(decoder, sampler):
    e = embeds()
    a = decoder.generate(e, generator=gen(0), sampler=sampler)
    assert a.shape == (2, 3, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, decoder.generate(e, generator=gen(0), sampler=sampler))
    assert not torch.allclose(a, decoder.generate(e, generator=gen(1), sampler=sampler))
    assert not torch.allclose(a, decoder.generate(embeds(seed=4), generator=gen(0), sampler=sampler))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver"])
@torch.no_grad()
def test_an_oracle_predictor_samples_its_image(teacher_dir, sampler, prediction, monkeypatch):
    """The sampling loop (timesteps, scheduler steps, guidance) with the exact eps / v of a fixed image at every
    step ends on that image, whatever the guidance (both halves of the batch agree)."""
    dec = tiny_decoder(teacher_dir, prediction_type=prediction).eval()
    x0, ab = shapes_batch(2), dec.noise_scheduler.alphas_cumprod

    def oracle(x, t, cond):
        a = ab[t].view(-1, 1, 1, 1)
        target = x0.repeat(len(x) // len(x0), 1, 1, 1)
        eps = (x - a.sqrt() * target) / (1 - a).sqrt()
        return eps if prediction == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * target

    noise, t = torch.randn(x0.shape, generator=gen(1)), torch.tensor([100, 900])
    noisy = dec.noise_scheduler.add_noise(x0, noise, t)
    assert torch.allclose(dec.eps_of(oracle(noisy, t, None), noisy, t), noise, atol=1e-4)  # what evaluate measures
    monkeypatch.setattr(dec, "predict", oracle)
    for scale in (1.0, 4.0):
        out = dec.generate(embeds(), steps=10, guidance_scale=scale, sampler=sampler, generator=gen(0))
        assert (out - x0).abs().max() < 1e-4, (sampler, scale)


def manual_ddim(decoder, cond, steps, generator, scale=1.0, null=None):
    """The DDIM loop written out: predictions of the condition alone (scale 1), or the blend of separate
    conditional and unconditional passes."""
    sched = decoder._scheduler("ddim")
    sched.set_timesteps(steps)
    x = torch.randn(len(cond), 3, 32, 32, generator=generator)
    for t in sched.timesteps:
        ts = t.expand(len(x))
        eps = decoder.predict(x, ts, cond)
        if scale != 1.0:
            uncond = decoder.predict(x, ts, null)
            eps = uncond + scale * (eps - uncond)
        x = sched.step(eps, t, x).prev_sample
    return x.clamp(-1, 1)


@torch.no_grad()
def test_guidance_scale_one_is_the_conditional_model_alone(decoder):
    e = embeds()
    one = decoder.generate(e, steps=3, guidance_scale=1.0, generator=gen(0))
    assert torch.equal(one, manual_ddim(decoder, decoder.condition(e), 3, gen(0)))
    guided = decoder.generate(e, steps=3, guidance_scale=3.0, generator=gen(0))
    saved = decoder.null_embedding.detach().clone()
    try:  # scale 1 never reads the null embedding; guidance does
        decoder.null_embedding.add_(1.0)
        assert torch.equal(one, decoder.generate(e, steps=3, guidance_scale=1.0, generator=gen(0)))
        assert not torch.allclose(guided, decoder.generate(e, steps=3, guidance_scale=3.0, generator=gen(0)))
    finally:
        decoder.null_embedding.copy_(saved)


@torch.no_grad()
def test_guided_sampling_blends_conditional_and_unconditional_passes(decoder):
    e = embeds()
    null = decoder.null_condition(2)
    guided = decoder.generate(e, steps=3, guidance_scale=4.0, generator=gen(0))
    # the doubled batch [cond; null] and two separate passes agree up to float rounding
    want = manual_ddim(decoder, decoder.condition(e), 3, gen(0), scale=4.0, null=null)
    assert torch.allclose(guided, want, atol=1e-4)
    assert not torch.allclose(guided, decoder.generate(e, steps=3, guidance_scale=1.0, generator=gen(0)), atol=1e-3)
    zero_scale = manual_ddim(decoder, null, 3, gen(0))  # scale 0: the unconditional model alone
    assert torch.allclose(decoder.generate(e, steps=3, guidance_scale=0.0, generator=gen(0)), zero_scale, atol=1e-4)


def test_evaluate_and_visualize(decoder):
    x = shapes_batch(4)
    metrics = decoder.evaluate([{"image": x}, {"image": shapes_batch(8)[4:]}])
    assert set(metrics) == {"eps_mse", "eps_mse_null", "embed_cosine", "embed_cosine_other"}
    assert all(np.isfinite(v) for v in metrics.values()) and -1 <= metrics["embed_cosine"] <= 1
    assert metrics == decoder.evaluate([{"image": x}, {"image": shapes_batch(8)[4:]}])  # fixed noise and seeds
    grid = decoder.visualize({"image": x})
    assert grid.shape == (8, 3, 32, 32) and torch.equal(grid[:4], x)


def test_wrong_widths_and_missing_embedder_are_named(teacher_dir):
    dec = tiny_decoder(teacher_dir, embed_dim=24)
    with pytest.raises(ValueError, match=r"model.embedder \('.*'\) gives 16-d embeddings; model.embed_dim is 24"):
        dec({"image": shapes_batch(2)})
    with pytest.raises(ValueError, match=r"embeddings must be B x 24, got \(2, 16\)"):
        dec.generate(embeds())
    bare = UnCLIPDecoder(**TINY)
    with pytest.raises(ValueError, match=r"need model.embedder"):
        bare({"image": shapes_batch(2)})


# ---- training ---------------------------------------------------------------------------------------------------

def test_a_few_dozen_steps_lower_the_eps_loss(teacher_dir):
    dec = tiny_decoder(teacher_dir, eval_steps=0, patch=1)  # full resolution: fastest per step (patch 2: 1.11 -> 0.77)
    batch = {"image": shapes_batch(8, "train")}
    before = dec.evaluate([batch])["eps_mse"]  # fixed timesteps and noise: comparable before and after
    opt = torch.optim.AdamW(dec.parameters(), lr=3e-3)
    dec.train()
    for _ in range(20):  # measured: 1.11 -> 0.29 (under 4 s on 2 busy cores)
        out = dec(batch)
        assert set(out) == {"loss", "eps_mse"} and out["loss"].requires_grad
        out["loss"].backward()
        opt.step()
        opt.zero_grad()
    after = dec.evaluate([batch])
    assert after["eps_mse"] < 0.5 * before, (before, after)
    assert not any("embedder" in k for k in dec.state_dict())  # the teacher was read, not adopted


def test_condition_dropout_uses_the_null_embedding(decoder):
    e = embeds(64)
    torch.manual_seed(0)
    dropped = decoder.condition(e, drop=0.5)
    is_null = (dropped == decoder.null_embedding).all(1)
    assert 10 < int(is_null.sum()) < 54  # about half, each row either the null or the normalised embedding
    assert torch.equal(dropped[~is_null], decoder.condition(e)[~is_null])
    assert torch.equal(decoder.condition(e, drop=0.0), decoder.condition(e))


# ---- saving -----------------------------------------------------------------------------------------------------

def test_the_embedder_is_recorded_not_saved_and_checked_on_load(decoder, teacher_dir, tmp_path):
    decoder.save_pretrained(tmp_path / "dec")
    cfg = json.loads((tmp_path / "dec" / "config.json").read_text())
    assert cfg["model_type"] == "unclip_decoder" and cfg["unclip"] is None
    assert cfg["embedder"]["path"] == teacher_dir and cfg["embedder"]["frozen"] is True
    assert cfg["embedder"]["fingerprint"] == fingerprint(teacher_dir) != ""
    keys = set(load_file(str(tmp_path / "dec" / "model.safetensors")))
    assert keys == set(decoder.state_dict()) and not any(k.startswith(("embedder", "vit.")) for k in keys)
    assert "null_embedding" in keys
    loaded = VistokModel.from_pretrained(str(tmp_path / "dec"))
    e = embeds()
    assert torch.equal(loaded.generate(e, generator=gen(0)), decoder.generate(e, generator=gen(0)))
    x = shapes_batch(2)
    assert torch.equal(loaded.embed(x), decoder.embed(x))
    # another teacher behind the recorded path (here: another projection head) is refused when first read
    torch.manual_seed(1)
    lookup("model", "vit_teacher")(image_size=32, in_channels=3, patch=8, dim=E, depth=1, heads=2,
                                   proj_dim=4).save_pretrained(tmp_path / "other")
    moved = VistokModel.from_pretrained(str(tmp_path / "dec"), parts={"embedder": str(tmp_path / "other")})
    with pytest.raises(ValueError, match=r"part 'embedder'.*not the ones .* was saved with"):
        moved.embed(x)


# ---- the seed pipeline ------------------------------------------------------------------------------------------

def fake_tokenizer(gen_dim=E):
    torch.manual_seed(0)
    return FakeSeedTokenizer(gen_dim=gen_dim).eval()


def test_pipeline_decodes_codes_and_reconstructs(decoder):
    pipe = Pipeline.for_components({"tokenizer": fake_tokenizer(), "decoder": decoder}, data=SHAPES)
    assert pipe.pipeline_type == "seed"  # the decoder drives: a tokenizer alone would be "reconstruction"
    pipe.check()
    x = shapes_batch(3)
    codes = pipe.encode(x)
    assert codes.shape == (3, 4) and codes.dtype == torch.long
    images = pipe.decode(codes, seed=0, steps=2, guidance_scale=2.0)
    assert images.shape == (3, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    want = decoder.generate(pipe.tokenizer.generation_embedding(codes), steps=2, guidance_scale=2.0, generator=gen(0))
    assert torch.equal(images, want)
    assert torch.equal(pipe.reconstruct(x, seed=0, steps=2, guidance_scale=2.0), images)
    with pytest.raises(ValueError, match=r"codes must be B x 4 integers"):
        pipe.decode(codes[:, :3])
    with pytest.raises(ValueError, match=r"codes must be in 0..7"):
        pipe.decode(codes + 8)
    with pytest.raises(ValueError, match=r"sampling options \['top_k'\] are not options"):
        pipe.decode(codes, top_k=3)


def test_check_fits_rejects_a_width_mismatch(decoder):
    from vistok.pipelines.seed import SeedPipeline

    pipe = SeedPipeline({"tokenizer": fake_tokenizer(gen_dim=E + 8), "decoder": decoder})
    with pytest.raises(ValueError, match=r"decoder embed_dim 16 != tokenizer gen_dim 24: the 'unclip_decoder' decoder "
                                         r"is conditioned on 16-d embeddings and the 'fake_seed_tokenizer' tokenizer"):
        pipe.check()
    plain = lookup("model", "vqgan")(ch=8, ch_mult=[1, 2], z_channels=8, codebook_size=8, codebook_dim=4,
                                     kmeans_init=False)
    with pytest.raises(ValueError, match=r"a 'vqgan' tokenizer has no generation embedding"):
        SeedPipeline({"tokenizer": plain, "decoder": decoder}).check()
    with pytest.raises(ValueError, match=r"'seed' pipeline needs components \['decoder', 'tokenizer'\]"):
        SeedPipeline({"tokenizer": fake_tokenizer()}).check()


def test_release_from_pretrained_and_sample_py(decoder, tmp_path):
    pipe = Pipeline.for_components({"tokenizer": fake_tokenizer(), "decoder": decoder}, data=SHAPES)
    pipe.save_pretrained(str(tmp_path / "seed"))
    meta = json.loads((tmp_path / "seed" / "pipeline.json").read_text())
    assert meta["pipeline_type"] == "seed" and meta["components"]["decoder"]["model_type"] == "unclip_decoder"
    loaded = Pipeline.from_pretrained(str(tmp_path / "seed"))
    codes = loaded.encode(shapes_batch(2))
    assert torch.equal(loaded.decode(codes, seed=1, steps=2), pipe.decode(codes, seed=1, steps=2))
    # sample.py: the held-out images reconstructed (inputs above outputs), then codes from a file
    out = tmp_path / "samples"
    proc = call_cli(["sample.py", "--pipeline", tmp_path / "seed", "--out", out, "--num-images", 3, "--batch-size", 2,
                     "--steps", 2, "--guidance-scale", 2])
    assert last_json(proc)["num_images"] == 3
    settings = json.loads((out / "sampling.json").read_text())
    assert settings["mode"] == "reconstruct" and settings["steps"] == 2 and settings["guidance_scale"] == 2.0
    assert sorted(os.listdir(out)) == ["00000.png", "00001.png", "00002.png", "grid.png", "sampling.json"]
    from vistok.image_files import read_images

    data = ShapesWorld("test", image_size=32, size=64, max_objects=2)
    x = torch.stack([data[i]["image"] for i in range(3)])
    first = loaded.decode(loaded.encode(x[:2]), seed=0, steps=2, guidance_scale=2.0)  # batch 0: seed 0
    assert (read_images(str(out), 2) - first).abs().max() <= 1 / 127.5 + 1e-6  # PNG rounding only
    np.save(tmp_path / "codes.npy", codes.numpy())
    proc = call_cli(["sample.py", "--pipeline", tmp_path / "seed", "--out", tmp_path / "decoded", "--codes",
                     tmp_path / "codes.npy", "--steps", 2])
    assert json.loads((tmp_path / "decoded" / "sampling.json").read_text())["mode"] == "decode"
    np.save(tmp_path / "bad.npy", codes.numpy().astype(np.float32))
    proc = call_cli(["sample.py", "--pipeline", tmp_path / "seed", "--out", tmp_path / "bad", "--codes",
                     tmp_path / "bad.npy"], check=False)
    assert proc.returncode != 0 and "expected B x Q integers" in proc.stderr


# ---- the configs --------------------------------------------------------------------------------------------------

def test_the_shapes_config_trains_releases_and_samples(teacher_dir, tmp_path):
    """train.py on configs/seed/decoder_shapes.yaml (made tiny) -> release.py with a fake tokenizer run -> sample.py."""
    tiny = [f"model.{k}={json.dumps(v)}" for k, v in TINY.items() if k not in ("image_size", "in_channels")]
    common = ["train.batch_size=8", "train.log_with=none", "train.progress=false", "train.mixed_precision=no",
              "train.warmup_steps=0", "train.checkpoint_every=4", "train.ema_decay=0", "data.size=32"]
    call_cli(["train.py", "--config", os.path.join(ROOT, "configs/seed/decoder_shapes.yaml"), *tiny, *common,
              f"model.embedder.path={teacher_dir}", "train.max_steps=4", "train.eval_every=4", "train.image_every=4",
              "train.eval_batches=1", f"train.output_dir={tmp_path / 'dec'}"])
    summary = json.loads((tmp_path / "dec" / "train_summary.json").read_text())
    assert {"eval/eps_mse", "eval/eps_mse_null", "eval/embed_cosine"} <= set(summary["metrics"])
    assert os.path.isfile(tmp_path / "dec" / "samples" / "step-0000004.png")
    # release.py takes a component from an earlier release: the fake tokenizer released alone (reconstruction)
    Pipeline.for_components({"tokenizer": fake_tokenizer()}, data=SHAPES).save_pretrained(str(tmp_path / "tok"))
    proc = call_cli(["release.py", "--stage", f"tokenizer={tmp_path / 'tok'}", "--stage", f"decoder={tmp_path / 'dec'}",
                     "--out", tmp_path / "rel"])
    assert last_json(proc)["pipeline_type"] == "seed"
    pipe = Pipeline.from_pretrained(str(tmp_path / "rel"))
    assert pipe.data == SHAPES and pipe.decoder.embed_dim == E
    call_cli(["sample.py", "--pipeline", tmp_path / "rel", "--out", tmp_path / "s", "--num-images", 2, "--steps", 2])
    assert os.path.isfile(tmp_path / "s" / "grid.png")


# ---- paper scale: the frozen SD-2.1-unCLIP pipeline ------------------------------------------------------------

from tests.test_parts_sd import unclip_dir  # noqa: E402,F401 (the tiny SD-2.1-unCLIP folder fixture)


def test_stable_unclip_mode_generates_from_an_embedding(unclip_dir, tmp_path):
    from tests.test_parts_sd import EMBED
    from vistok.parts.base import build_part

    spec = {"type": "stable_unclip", "path": unclip_dir}
    dec = UnCLIPDecoder(embed_dim=EMBED, image_size=16, unclip=spec, sample_steps=2).eval()
    assert not hasattr(dec, "unet") and dec.state_dict() == {}
    e = torch.randn(2, EMBED, generator=gen(2))
    out = dec.generate(e, generator=gen(0))
    assert out.shape == (2, 3, 16, 16) and out.min() >= -1 and out.max() <= 1
    part = build_part(spec, "unclip")  # SEED's call: noise_level 0, guidance 10 (the config's), 16 px
    want = part.generate(e, num_inference_steps=2, guidance_scale=10.0, noise_level=0,
                         generator=gen(0), height=16, width=16)
    assert torch.equal(out, want.clamp(-1, 1))
    assert not torch.equal(out, dec.generate(e, generator=gen(1)))
    with pytest.raises(ValueError, match=r"SD-2.1-unCLIP pipeline \(model.unclip\), used frozen"):
        dec({"image": shapes_batch(2)[:, :, :16, :16]})
    with pytest.raises(ValueError, match=r"decodes 16-d image embeddings; model.embed_dim is 1024"):
        UnCLIPDecoder(embed_dim=1024, unclip=spec)
    # saved: the config alone (path + fingerprint), an empty weights file; loaded, the same images
    dec.save_pretrained(tmp_path / "dec")
    cfg = json.loads((tmp_path / "dec" / "config.json").read_text())
    assert cfg["unclip"]["path"] == unclip_dir and cfg["unclip"]["fingerprint"] == part.folder_fingerprint()
    assert load_file(str(tmp_path / "dec" / "model.safetensors")) == {}
    loaded = VistokModel.from_pretrained(str(tmp_path / "dec"))
    assert torch.equal(loaded.generate(e, generator=gen(0)), out)
    # in a seed pipeline: codes -> the fake tokenizer's 16-d embedding -> SD-unCLIP images
    pipe = Pipeline.for_components({"tokenizer": fake_tokenizer(gen_dim=EMBED), "decoder": loaded})
    pipe.check()
    assert pipe.decode(torch.tensor([[1, 2, 3, 4]]), seed=0).shape == (1, 3, 16, 16)
