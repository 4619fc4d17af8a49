"""SEED tokenizer: causal queries that still see every image feature, stage II leaving stage I bit-identical,
the contrastive loss over 2 processes equal to one, the paper config at BLIP-2's Q-Former size, save -> load ->
encode equality, and both stages learning on a fixed batch."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from vistok.data.text import shapes_vocabulary

TINY = dict(num_queries=6, dropout=0.0, hidden=32, layers=2, heads=2, intermediate=64, cross_attention_frequency=1,
            text_len=16, embed_dim=16, codebook_size=32, code_dim=8, head_depth=1, head_heads=2, gen_dim=32)


def make_teacher(folder: str) -> str:
    from vistok.tokenizers.semantic_teacher import ContrastiveViT

    torch.manual_seed(0)
    ContrastiveViT(image_size=32, in_channels=3, patch=8, dim=32, depth=1, heads=2, views="crop_flip"
                   if "views" in ContrastiveViT.__init__.__code__.co_varnames else "affine").save_pretrained(folder)
    return folder


def tiny_seed(teacher: str, **kw):
    from vistok.tokenizers.seed import SEEDTokenizer

    return SEEDTokenizer(vision={"type": "vistok", "path": teacher}, text_vocab=shapes_vocabulary(), **{**TINY, **kw})


def batch_of(n: int, split: str = "train") -> dict:
    from vistok.data.shapes import ShapesWorld

    ds = ShapesWorld(split, size=max(n, 16), max_objects=2)
    items = [ds[i] for i in range(n)]
    return {"image": torch.stack([it["image"] for it in items]), "caption": [it["caption"] for it in items]}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_teacher(str(tmp_path_factory.mktemp("teacher") / "t"))


def test_queries_are_causal_and_see_every_image_feature(teacher):
    from vistok.tokenizers.seed_qformer import causal_queries

    torch.manual_seed(0)
    model = tiny_seed(teacher).eval()
    feats = model.image_features(batch_of(2)["image"])
    with torch.no_grad():
        base = causal_queries(model.qf, feats)
        k = 3
        model.qf.query_tokens[:, k] += torch.randn_like(model.qf.query_tokens[:, k])  # noise: a constant is erased by LayerNorm
        moved = causal_queries(model.qf, feats)
        assert torch.equal(moved[:, :k], base[:, :k]) and (moved[:, k:] - base[:, k:]).abs().amax() > 1e-3
        model.qf.query_tokens[:, k] -= moved.new_zeros(1)  # (no-op: keep the perturbed queries for the next check)
        other = feats.clone()
        other[:, -1] += torch.randn_like(other[:, -1])  # the last image feature alone
        seen = causal_queries(model.qf, other)
        assert ((seen - moved).abs().amax(-1) > 1e-4).all()  # every query attends to it


def test_stage_one_learns_and_stage_two_leaves_it_bit_identical(teacher):
    torch.manual_seed(0)
    one = tiny_seed(teacher)
    batch = batch_of(32)
    opt = torch.optim.AdamW([p for p in one.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(60):
        loss = one(batch)["loss"]
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(one(batch)["loss"]) < 0.7 * first and float(one(batch)["loss"]) < math.log(32) - 0.5  # below uniform
    two = tiny_seed(teacher, stage=2)
    two.load_state_dict(one.state_dict())  # what train.init_from does
    stage_one = {k: v.clone() for k, v in two.state_dict().items() if k.startswith("qf.") or k == "temp"}
    trainable = [p for p in two.parameters() if p.requires_grad]
    assert trainable and not any(p.requires_grad for p in two.qf.parameters()) and not two.temp.requires_grad
    opt = torch.optim.AdamW(trainable, lr=3e-3, weight_decay=0.05)
    two.train()
    assert not two.qf.training  # frozen modules stay in eval mode (no dropout)
    before = two(batch)
    for _ in range(40):
        out = two(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    after = two(batch)
    assert float(after["loss"]) < 0.7 * float(before["loss"]) and float(after["rec"]) < float(before["rec"])
    assert all(torch.equal(two.state_dict()[k], v) for k, v in stage_one.items())
    metrics = two.eval().evaluate([batch])
    assert 0 < metrics["codebook_usage"] <= 1 and metrics["perplexity"] >= 1 and metrics["recon_cosine"] > 0


def test_encode_needs_stage_two_and_save_load_encodes_the_same(teacher, tmp_path):
    from vistok.modeling import VistokModel

    with pytest.raises(ValueError, match="stage-II"):
        tiny_seed(teacher).encode(batch_of(2)["image"])
    torch.manual_seed(0)
    model = tiny_seed(teacher, stage=2).eval()
    x = batch_of(4)["image"]
    model.save_pretrained(str(tmp_path / "seed"))
    cfg = json.loads((tmp_path / "seed" / "config.json").read_text())
    assert cfg["vision"]["fingerprint"] and not any("vit." in k for k in model.state_dict())  # the teacher stays out
    loaded = VistokModel.from_pretrained(str(tmp_path / "seed"))
    codes = model.encode(x)
    assert codes.shape == (4, 6) and torch.equal(loaded.encode(x), codes)
    assert torch.equal(loaded.generation_embedding(codes), model.generation_embedding(codes))
    assert loaded.layout.shape == (6,) and loaded.codebook_size == 32


def test_beta_placement_and_reverse_qformer_head(teacher):
    from vistok.quantizers.vq import EuclideanVQ

    torch.manual_seed(0)
    z = torch.randn(2, 5, 4, requires_grad=True)
    for on, enc_w, book_w in (("codebook", 1.0, 0.25), ("commitment", 0.25, 1.0)):
        vq = EuclideanVQ(4, 8, beta=0.25, beta_on=on)
        zq, codes, loss = vq(z)
        cb = vq.embedding[codes]
        want = enc_w * ((z - cb.detach()) ** 2).mean() + book_w * ((cb - z.detach()) ** 2).mean()
        assert torch.allclose(loss, want) and torch.equal(codes, torch.cdist(z.detach().reshape(-1, 4), vq.embedding).argmin(-1).reshape(2, 5))
    model = tiny_seed(teacher, stage=2, gen_head="qformer")
    assert model(batch_of(4))["gen"] > 0 and model.generation_embedding(torch.zeros(2, 6, dtype=torch.long)).shape == (2, 32)


def test_paper_config_has_blip2_sized_qformer_on_meta(tmp_path):
    """The paper config's Q-Former (from a BLIP-2 retrieval folder: only its config is read on meta) counted against
    transformers' Blip2QFormerModel at BLIP-2's config. Counted: the 12 layers (self-attention, cross-attention every
    2nd layer, the queries' and the text's feed-forwards) and the input LayerNorm: 161,825,280; not counted: the
    32 x 768 queries, the word/position embeddings and the two 256-d projections (asserted apart)."""
    from transformers import Blip2Config, Blip2QFormerModel

    from vistok.config import build, load_config

    folder = tmp_path / "blip2"
    cfg = Blip2Config(image_text_hidden_size=256, qformer_config={"use_qformer_text_input": True})
    cfg.save_pretrained(str(folder))
    c = load_config(os.path.join(ROOT, "configs/seed/paper_stage1.yaml"),
                    [f"model.vision.path={folder}", f"model.qformer.path={folder}"])
    with torch.device("meta"):
        model = build("model", c.model)
        ref = Blip2QFormerModel(cfg.qformer_config)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.qf.qformer) == count(ref) == 161_825_280 and cfg.qformer_config.hidden_size == 768
    assert model.qf.query_tokens.shape == (1, 32, 768) and cfg.vision_config.num_hidden_layers == 39
    assert model.quantize.embedding.shape == (8192, 32) and model.distill_image_proj.weight.shape == (1024, 1024)
    assert model.qf.embeddings.word_embeddings.weight.shape == (30522, 768)
    assert model.qf.vision_projection.weight.shape == model.qf.text_projection.weight.shape == (256, 768)


@pytest.mark.slow
def test_contrastive_loss_over_two_processes_equals_one(teacher, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    script = os.path.join(ROOT, "tests", "helpers", "seed_itc.py")
    one = subprocess.run([sys.executable, script, str(tmp_path / "one.json"), teacher], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", script,
                          str(tmp_path / "two.json"), teacher], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert (a["world"], b["world"]) == (1, 2) and abs(a["loss"] - b["loss"]) < 1e-5, (a, b)


def test_seed_release_round_trip_encodes_and_decodes_the_same(teacher, tmp_path):
    """tokenizer + decoder -> a 'seed' release -> Pipeline.from_pretrained: equal codes, equal images for a seed."""
    from tests.test_seed_decoder import tiny_decoder
    from vistok.pipelines.base import Pipeline

    torch.manual_seed(0)
    tok = tiny_seed(teacher, stage=2).eval()
    dec = tiny_decoder(teacher, embed_dim=32).eval()
    pipe = Pipeline.for_components({"tokenizer": tok, "decoder": dec}, data={"type": "shapes", "max_objects": 2})
    assert pipe.pipeline_type == "seed"
    pipe.save_pretrained(str(tmp_path / "rel"))
    loaded = Pipeline.from_pretrained(str(tmp_path / "rel"))
    x = batch_of(4)["image"]
    codes = pipe.encode(x)
    assert torch.equal(loaded.encode(x), codes)
    a, b = pipe.decode(codes, seed=3), loaded.decode(codes, seed=3)
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b)
