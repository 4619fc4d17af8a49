"""Training on real pretrained classes (tiny random models): TokenFlow with a CLIP teacher and a fine-tuned CLIP
semantic tower; a text-conditional AR over a frozen T5 whose features the token cache stores."""
import json
import os

import pytest
import torch
from safetensors import safe_open

from tests import tiny_hf
from tests.conftest import ROOT, call_cli, trained_vs_fresh
from vistok.config import load_config
from vistok.loading import model_from_run
from vistok.training.trainer import train

QUIET = ["train.log_with=none", "train.progress=false", "train.image_every=0", "train.eval_every=0",
         "train.mixed_precision=no", "train.warmup_steps=2"]


@pytest.mark.slow
def test_tokenflow_trains_with_a_clip_teacher_and_tower(tmp_path):
    clip = str(tmp_path / "clip")
    tiny_hf.clip_vision(clip, image_size=32, patch=4, hidden=32, projection=16)
    spec = f"{{type: clip_vision, path: {clip}, frozen: false, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}}"
    teacher = f"{{type: clip_vision_projection, path: {clip}, post_layernorm: true, project: true}}"
    cfg = load_config(os.path.join(ROOT, "configs/tokenflow/mnist.yaml"), QUIET + [
        "model.ch=8", "model.z_channels=16", "model.codebook_size=64", "model.sem_decoder_depth=1", "model.sem_heads=2",
        f"model.semantic_encoder={spec}", f"model.teacher={teacher}", "model.teacher_dim=16", "data.limit=64",
        "train.batch_size=16", "train.max_steps=30", "train.checkpoint_every=30", "train.lr=3e-3",
        f"train.output_dir={tmp_path / 'run'}"])
    from vistok.data.mnist import MNIST

    before, after, model = trained_vs_fresh(cfg, {"image": MNIST("train", limit=64).images})
    assert float(after["semantic"]) < float(before["semantic"]) and float(after["rec"]) < 0.5 * float(before["rec"])
    ckpt = next(p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith("checkpoint-"))
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("semantic_encoder.model.") for k in keys)  # fine-tuned: trained and saved
    assert not any("teacher" in k for k in keys)  # the frozen teacher never enters the weights
    tower = model.semantic_encoder.tower.encoder.layers[0].mlp.fc1.weight
    saved = tiny_hf.saved_tensors(clip)["vision_model.encoder.layers.0.mlp.fc1.weight"]
    assert not torch.equal(tower, saved)  # it moved from the pretrained weights


@pytest.mark.slow
def test_text_conditional_ar_trains_over_a_frozen_t5_with_cached_features(tmp_path):
    from vistok.pipelines.release import release

    t5 = str(tmp_path / "t5")
    tiny_hf.t5(t5, d_model=16)
    tok_run = tmp_path / "tok"
    train(load_config(os.path.join(ROOT, "configs/vqgan/shapes.yaml"), QUIET + [
        "model.ch=8", "model.z_channels=16", "model.codebook_size=64", "model.kmeans_init=false", "data.size=64",
        "train.batch_size=32", "train.max_steps=10", "train.checkpoint_every=10", f"train.output_dir={tok_run}"]))
    release(str(tmp_path / "tok_rel"), tokenizer=str(tok_run))
    gen = tmp_path / "gen"
    cfg = load_config(os.path.join(ROOT, "configs/ar/shapes.yaml"), QUIET + [
        "model.vocab_size=64", "model.dim=32", "model.depth=1", "model.heads=2", "model.text_vocab=[]",
        f"model.text_encoder={{type: t5_encoder, path: {t5}, max_length: 12}}", "model.text_len=12", "model.text_dim=16",
        f"data.tokenizer={tmp_path / 'tok_rel'}", "data.text_encoder=${model.text_encoder}", "train.gen_eval.every=0",
        "train.batch_size=32", "train.max_steps=40", "train.checkpoint_every=40", "train.lr=3e-3",
        f"train.output_dir={gen}"])
    train(cfg)
    caches = sorted(os.listdir(gen / "token_cache"))
    text_cache = [c for c in caches if ".text-" in c and c.startswith("train-")]
    assert text_cache, caches
    model, _, _ = model_from_run(str(gen), use_ema=False)
    assert model.encoded_text.lazy.part is None  # training read the cached features, never the encoder
    from vistok.caches.tokens import TokenDataset

    data = TokenDataset(str(tmp_path / "tok_rel"), cache_dir=str(gen / "token_cache"), text_encoder=dict(cfg.model.text_encoder))
    items = [data[i] for i in range(32)]
    batch = {"codes": torch.stack([it["codes"] for it in items]), "text_features": torch.stack([it["text_features"] for it in items])}
    assert torch.allclose(batch["text_features"], model.encoded_text.encode([it["caption"] for it in items], "cpu"), atol=1e-6)
    torch.manual_seed(0)
    from vistok.config import build

    fresh = build("model", cfg.model)
    with torch.no_grad():
        ce_before = float(fresh.eval()(batch)["loss"])
        ce_after = float(model.eval()(batch)["loss"])
    assert ce_after < ce_before - 0.3, (ce_before, ce_after)
    release(str(tmp_path / "pipe"), tokenizer=str(tok_run), generator=str(gen))
    meta = json.loads((tmp_path / "pipe" / "pipeline.json").read_text())
    assert meta["pipeline_type"] == "text-to-image"
    gcfg = json.loads((tmp_path / "pipe" / "generator" / "config.json").read_text())
    assert gcfg["text_encoder"]["fingerprint"] and gcfg["text_encoder"]["path"] == t5
    with safe_open(str(tmp_path / "pipe" / "generator" / "model.safetensors"), "pt") as f:
        assert not any("text_encoder" in k for k in f.keys()) and any(k.startswith("encoded_text.proj") for k in f.keys())
    from vistok.pipelines.base import Pipeline

    os.rename(t5, tmp_path / "t5_moved")
    pipe = Pipeline.from_pretrained(str(tmp_path / "pipe"), parts={"text_encoder": str(tmp_path / "t5_moved")})
    g = torch.Generator().manual_seed(0)
    codes = pipe.generator.sample(prompts=["a red circle", "two blue squares"], cfg_scale=2.0, generator=g)
    g = torch.Generator().manual_seed(0)
    again = pipe.generator.sample(prompts=["a red circle", "two blue squares"], cfg_scale=2.0, generator=g, use_cache=False)
    assert torch.equal(codes, again)  # the KV cache over the T5 prefix gives the recomputed samples
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"tag": "single_object", "prompt": "a red circle",
                                   "include": [{"class": "circle", "count": 1}]}) + "\n")
    args = ["sample.py", "--pipeline", str(tmp_path / "pipe"), "--prompts", str(prompts), "--images-per-prompt", "2"]
    lost = call_cli(args + ["--out", str(tmp_path / "s0")], check=False)
    assert lost.returncode == 2 and "text_encoder" in lost.stderr and t5 in lost.stderr
    call_cli(args + ["--out", str(tmp_path / "s1"), "--part", f"text_encoder={tmp_path / 't5_moved'}"])
    assert sorted(os.listdir(tmp_path / "s1" / "00000" / "samples")) == ["0000.png", "0001.png"]
