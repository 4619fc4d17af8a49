"""SEED-LLaMA (issue #17): the mixed text + image-code vocabulary, target-side losses, cached against recomputed
sampling in both directions, a model that learns to read codes, the LoRA backbone (a tiny LlamaForCausalLM
folder) training only its adapters and modules_to_save, and a release sampled both ways from sample.py."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import call_cli, last_json
from vistok.data.text import shapes_vocabulary
from vistok.generators.multimodal_vocab import HFText, MultimodalVocab, WordText
from vistok.generators.seed_llama import SeedLlama
from vistok.pipelines.base import Pipeline

K, Q = 16, 6
CAPTIONS = ["a red circle", "two blue squares", "a green triangle left of a cyan circle", "a yellow square",
            "a magenta triangle and a red square", "three cyan circles"]


def tiny(**kw) -> SeedLlama:
    torch.manual_seed(0)
    args = dict(codebook_size=K, num_queries=Q, text_vocab=shapes_vocabulary(), text_len=12, dim=32, depth=2, heads=2)
    return SeedLlama(**{**args, **kw})


def some_codes(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, K, (n, Q), generator=torch.Generator().manual_seed(seed))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- the vocabulary ------------------------------------------------------------------------------------------

def word_vocab() -> MultimodalVocab:
    return MultimodalVocab(WordText(shapes_vocabulary(), 12), K)


def test_text_and_codes_round_trip_through_ids():
    v = word_vocab()
    codes = some_codes(3)
    for segs in ([("text", CAPTIONS[2]), ("image", codes[0].tolist())],
                 [("image", codes[1].tolist()), ("text", CAPTIONS[1])],
                 [("text", "a red circle"), ("image", codes[2].tolist()), ("text", "and"), ("image", [0, K - 1])]):
        ids = v.encode_segments(segs)
        assert v.segments(ids) == segs
        assert ids[-1] == v.text.eos and max(ids) < v.size
    # the layout: text ids first, codes at the offset, then <img> and </img>
    ids = v.encode_segments([("image", [0, K - 1])])
    assert ids == [v.boi, v.offset, v.offset + K - 1, v.eoi, v.text.eos] and v.boi == v.offset + K
    assert v.describe(ids) == f"<img><img_00000><img_{K - 1:05d}></img>"
    with pytest.raises(ValueError, match=f"0..{K - 1}"):
        v.image([K])


def test_sequences_put_the_target_side_after_the_source():
    v = word_vocab()
    c = some_codes(1)[0].tolist()
    src, tgt = v.text_to_image("a red circle", c)
    assert v.segments(src + tgt) == [("text", "a red circle"), ("image", c)]
    assert src[-1] == v.boi and tgt == [v.offset + k for k in c] + [v.eoi, v.text.eos]
    src, tgt = v.image_to_text(c, "a red circle")
    assert src == [v.boi] + [v.offset + k for k in c] + [v.eoi] and v.text.decode(tgt[:-1]) == "a red circle"
    ids, target = v.pack([v.text_to_image("a red circle", c), v.image_to_text(c, "two blue squares")])
    assert ids.shape == (2, 3 + 1 + Q + 2) and (ids[1, Q + 2 + 4:] == v.text.pad).all()  # right padding
    assert target[0].sum() == Q + 2 and target[1].sum() == 4  # codes, </img>, end / three words, end
    assert not target[0, :4].any() and not target[1, : Q + 2].any()  # the source side carries no loss


def test_the_loss_is_the_cross_entropy_of_the_target_side_only():
    m = tiny(t2i_ratio=1.0, caption_dropout=0.0, dropout=0.0).eval()
    codes = some_codes(4)
    out = m({"codes": codes, "caption": CAPTIONS[:4]})
    ids, target = m.vocab.pack([m.vocab.text_to_image(cap, c) for cap, c in zip(CAPTIONS, codes.tolist())])
    logits = m.logits(ids[:, :-1])
    hand = [F.cross_entropy(logits[b, t - 1], ids[b, t]) for b in range(4) for t in range(1, ids.shape[1]) if target[b, t]]
    assert torch.allclose(out["loss"], torch.stack(hand).mean(), atol=1e-5)
    m2 = tiny(t2i_ratio=0.0, caption_dropout=0.0, dropout=0.0).eval()  # image -> text: the caption's words + end
    logs = m2({"codes": codes, "caption": CAPTIONS[:4]})
    assert "ce_i2t" in logs and "ce_t2i" not in logs


def test_check_fits_needs_the_tokenizers_codebook_and_code_count():
    class Tok:
        codebook_size, num_queries, token_shape, model_type = K, Q, (Q,), "t"

    m = tiny()
    m.check_fits({"tokenizer": Tok()})
    Tok.codebook_size = K * 2
    with pytest.raises(ValueError, match="codebook_size"):
        m.check_fits({"tokenizer": Tok()})
    Tok.codebook_size, Tok.token_shape, Tok.num_queries = K, (Q + 1,), Q + 1
    with pytest.raises(ValueError, match="num_queries"):
        m.check_fits({"tokenizer": Tok()})


# ---- sampling: cached = recomputed ---------------------------------------------------------------------------

@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_cached_code_sampling_equals_recomputation(cfg_scale):
    m = tiny().eval()
    prompts = ["a red circle", "two blue squares", "a red circle", "a green triangle left of a cyan circle"]
    a = m.sample_codes(prompts, cfg_scale=cfg_scale, generator=gen(), top_k=8)
    b = m.sample_codes(prompts, cfg_scale=cfg_scale, generator=gen(), top_k=8, use_cache=False)
    assert torch.equal(a, b) and a.shape == (4, Q) and 0 <= int(a.min()) and int(a.max()) < K
    assert torch.equal(a, m.sample_codes(prompts, cfg_scale=cfg_scale, generator=gen(), top_k=8))  # same seed
    with pytest.raises(ValueError, match="unknown word"):
        m.sample_codes(["a purple circle"])


def test_cached_caption_sampling_equals_recomputation_and_reads_text_ids_only():
    m = tiny().eval()
    codes = some_codes(5)
    a = m.sample_captions(codes, generator=gen(1))
    assert a == m.sample_captions(codes, generator=gen(1), use_cache=False)
    assert a == m.sample_captions(codes, generator=gen(1), cfg_scale=3.0)  # guidance is text -> image's
    words = set(shapes_vocabulary())
    assert all(set(c.split()) <= words for c in a)
    assert m.sample_captions(codes, temperature=0) == m.sample_captions(codes, temperature=0, use_cache=False)


def test_the_model_learns_to_caption_codes_and_lowers_the_code_loss():
    """A fixed set of 12 (codes, caption) pairs: 150 steps take the held-in losses down and the greedy captions
    of the codes become the training captions (an untrained model reads none)."""
    torch.manual_seed(0)
    m = tiny(dim=48, caption_dropout=0.0)
    codes = some_codes(12, seed=3)
    caps = [CAPTIONS[i % len(CAPTIONS)] for i in range(12)]
    batch = {"codes": codes, "caption": caps}
    before = m.eval().evaluate([batch])
    assert sum(c == t for c, t in zip(m.sample_captions(codes, temperature=0), caps)) == 0
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    m.train()
    for _ in range(150):
        loss = m(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = m.eval().evaluate([batch])
    assert after["caption_ce"] < 0.3 * before["caption_ce"] and after["code_ce"] < 0.6 * before["code_ce"]
    read = m.sample_captions(codes, temperature=0)
    assert sum(c == t for c, t in zip(read, caps)) >= 10, read


# ---- the causal-LM backbone with LoRA --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from tests.tiny_hf import tiny_llama

    folder = str(tmp_path_factory.mktemp("llama"))
    tiny_llama(folder)
    return folder


def lora_model(llama_dir, **kw):
    torch.manual_seed(0)
    lm = {"type": "causal_lm", "path": llama_dir, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
    return SeedLlama(codebook_size=K, num_queries=Q, lm=lm, text_len=12, **kw)


def test_llm_vocabulary_puts_codes_after_the_lms_rows_and_round_trips(llama_dir):
    m = lora_model(llama_dir)
    v = m.vocab
    assert isinstance(v.text, HFText) and v.offset == m.lm.base_vocab and v.size == m.lm.base_vocab + K + 2
    assert m.lm.model.get_input_embeddings().num_embeddings == v.size
    segs = [("text", "a red circle"), ("image", some_codes(1)[0].tolist())]
    assert v.segments(v.encode_segments(segs)) == segs


def test_lora_trains_only_adapters_and_modules_to_save(llama_dir):
    m = lora_model(llama_dir, caption_dropout=0.0).train()
    before = {k: v.detach().clone() for k, v in m.lm.model.state_dict().items()}
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert any("embed_tokens" in n for n in trainable) and any("lm_head" in n for n in trainable)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    loss = m({"codes": some_codes(4), "caption": CAPTIONS[:4]})["loss"]
    loss.backward()
    opt.step()
    after = m.lm.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k or "modules_to_save" in k for k in changed)
    assert any("lora_B" in k for k in changed)  # B starts at zero: the adapter moved
    saved = set(m.state_dict())
    assert saved and all("lora_" in k or "modules_to_save" in k for k in saved)  # the frozen base stays in its folder


def test_llm_backbone_cached_sampling_and_save_load(llama_dir, tmp_path):
    m = lora_model(llama_dir).eval()
    prompts = ["a red circle", "two blue squares"]
    a = m.sample_codes(prompts, cfg_scale=2.0, generator=gen(), top_k=5)
    assert torch.equal(a, m.sample_codes(prompts, cfg_scale=2.0, generator=gen(), top_k=5, use_cache=False))
    caps = m.sample_captions(a, generator=gen(2))
    assert caps == m.sample_captions(a, generator=gen(2), use_cache=False)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)  # trained adapters: the round trip must carry them
    m.save_pretrained(str(tmp_path / "m"))
    loaded = SeedLlama.from_pretrained(str(tmp_path / "m")).eval()
    ids = torch.tensor([m.vocab.encode_segments([("text", "a red circle"), ("image", a[0].tolist())])])
    assert torch.allclose(m.logits(ids), loaded.logits(ids), atol=1e-5)


def test_paper_config_builds_on_meta_with_seed_llamas_lora_counts(tmp_path):
    """configs/seed_llama/paper.yaml over a folder with Vicuna-7B's config: LLaMA-7B's 6,738,415,616 parameters,
    8194 new rows in the embeddings and the head, r-16 LoRA on the 7 projections of 32 layers (39,976,960, the
    known figure for LLaMA-7B), the trained copies of the embeddings, head and 65 norms; nothing else trains."""
    from tests.tiny_hf import llama_config_folder
    from vistok.config import build, load_config

    folder = llama_config_folder(str(tmp_path / "vicuna"))
    cfg = load_config("configs/seed_llama/paper.yaml", [f"model.lm.path={folder}"])
    with torch.device("meta"):
        m = build("model", cfg.model)
    h, inter, layers, rows = 4096, 11008, 32, 32000 + 8192 + 2
    assert m.vocab.offset == 32000 and m.vocab.size == rows and m.vocab.boi == 32000 + 8192
    lora = layers * 16 * (4 * (h + h) + 3 * (h + inter))
    copies = 2 * rows * h + (2 * layers + 1) * h
    base = 6_738_415_616 + 2 * 8194 * h
    named = dict(m.named_parameters())
    assert sum(p.numel() for n, p in named.items() if "lora_" in n) == lora == 39_976_960
    assert sum(p.numel() for p in named.values() if p.requires_grad) == lora + copies
    assert sum(p.numel() for p in named.values()) == base + lora + copies


# ---- the pipelines and sample.py -------------------------------------------------------------------------------

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A seed-text-to-image release: the fake SEED tokenizer + a tiny unCLIP decoder + a briefly trained model."""
    from tests.test_seed_decoder import SHAPES, FakeSeedTokenizer, tiny_decoder
    from vistok.registry import lookup

    folder = tmp_path_factory.mktemp("rel")
    torch.manual_seed(0)
    teacher = lookup("model", "vit_teacher")(image_size=32, in_channels=3, patch=8, dim=16, depth=1, heads=2, proj_dim=8)
    teacher.save_pretrained(str(folder / "teacher"))
    tok = FakeSeedTokenizer(num_queries=4, codebook_size=8)
    model = SeedLlama(codebook_size=8, num_queries=4, text_vocab=shapes_vocabulary(), text_len=12, dim=32, depth=1,
                      heads=2).eval()
    pipe = Pipeline.for_components({"tokenizer": tok, "decoder": tiny_decoder(str(folder / "teacher")).eval(),
                                    "generator": model}, data=SHAPES)
    assert pipe.pipeline_type == "seed-text-to-image"
    pipe.save_pretrained(str(folder / "seed-llama"))
    return str(folder / "seed-llama")


def test_release_samples_images_from_prompts_and_captions_from_images(release, tmp_path):
    from vistok.data.shapes import ShapesWorld

    pipe = Pipeline.from_pretrained(release)
    images = pipe(prompts=["a red circle", "two blue squares"], seed=3, steps=2, cfg_scale=2.0)
    assert images.shape == (2, 3, 32, 32)
    assert torch.equal(images, pipe(prompts=["a red circle", "two blue squares"], seed=3, steps=2, cfg_scale=2.0))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"tag": "single_object", "prompt": p, "include": [{"class": "circle", "count": 1}]})
                               + "\n" for p in ["a red circle", "a blue circle"]))
    out = tmp_path / "t2i"
    proc = call_cli(["sample.py", "--pipeline", release, "--out", out, "--prompts", prompts, "--images-per-prompt", 2,
                     "--steps", 2, "--cfg-scale", 2, "--top-k", 4])
    assert last_json(proc)["num_images"] == 4
    assert sorted(os.listdir(out / "00001" / "samples")) == ["0000.png", "0001.png"]
    proc = call_cli(["evaluate.py", "geneval", "--samples", out])
    assert 0.0 <= last_json(proc)["overall"] <= 1.0
    # the same release the other way: held-out images -> captions.jsonl, scored against the scenes
    out = tmp_path / "i2t"
    proc = call_cli(["sample.py", "--pipeline", release, "--pipeline-type", "seed-image-to-text", "--out", out,
                     "--num-images", 5, "--batch-size", 3, "--temperature", 0])
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert [r["item"] for r in rows] == list(range(5))
    call_cli(["sample.py", "--pipeline", release, "--pipeline-type", "seed-image-to-text", "--out", out, "--overwrite",
              "--num-images", 5, "--batch-size", 3, "--temperature", 0])  # its own captions.jsonl is replaced
    assert [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()] == rows
    i2t = Pipeline.from_pretrained(release, pipeline_type="seed-image-to-text")
    assert sorted(i2t.components) == ["decoder", "generator", "tokenizer"]
    data = ShapesWorld("test", image_size=32, size=64, max_objects=2)
    x = torch.stack([data[i]["image"] for i in range(3)])
    assert [r["caption"] for r in rows[:3]] == i2t(x, seed=0, temperature=0)  # batch 0: seed 0
    settings = json.loads((out / "sampling.json").read_text())
    assert settings["pipeline_type"] == "seed-image-to-text" and settings["split"] == "test"
    proc = call_cli(["evaluate.py", "captions", "--samples", out, "--reference-items", 50])
    scores = last_json(proc)
    assert scores["num_captions"] == 5 and "floor" in scores
    with pytest.raises(ValueError, match="needs components"):
        Pipeline.from_pretrained(release, pipeline_type="super-resolution")
    # a folder of the user's images (any size: resized to the tokenizer's 32 px), captioned under their names
    from PIL import Image

    (tmp_path / "mine").mkdir()
    for i in range(2):
        Image.fromarray(((x[i].permute(1, 2, 0).numpy() + 1) * 127.5).astype("uint8")).resize((48, 48)).save(
            tmp_path / "mine" / f"img{i}.png")
    call_cli(["sample.py", "--pipeline", release, "--pipeline-type", "seed-image-to-text", "--out", tmp_path / "mine-out",
              "--images", tmp_path / "mine", "--temperature", 0])
    rows = [json.loads(line) for line in (tmp_path / "mine-out" / "captions.jsonl").read_text().splitlines()]
    assert [r["image"] for r in rows] == ["img0.png", "img1.png"] and all(isinstance(r["caption"], str) for r in rows)
