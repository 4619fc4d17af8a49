"""The ``causal_lm`` part on a tiny random LlamaForCausalLM folder: the class's own logits, strict loading, new
token rows, LoRA through peft (only the adapters and modules_to_save train and are saved with their owner, the
base stays bit-identical and in its folder), an owner's save / load round trip and the KV cache."""
import json
import os
import shutil

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from tests import tiny_hf
from vistok.modeling import VistokModel
from vistok.parts.base import build_part
from vistok.registry import MODELS, register_model

IDS = torch.tensor([[3, 4, 7, 13, 5, 9, 20, 1], [3, 6, 8, 14, 30, 2, 11, 1]])


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("llama") / "llama")
    return folder, tiny_hf.tiny_llama(folder)


def spec(folder, **kw):
    return {"type": "causal_lm", "path": folder, **kw}


def test_part_equals_the_class_and_loads_strictly(llama, tmp_path):
    from transformers import AutoModelForCausalLM

    folder, _ = llama
    part = build_part(spec(folder), "lm")
    ref = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        logits, cache = part.logits(IDS)
        assert torch.equal(logits, ref(input_ids=IDS).logits.float()) and cache is None
    assert part.base_vocab == part.vocab_size == len(part.tokenizer) == 34 and part.dim == 32
    assert part.tokenizer.bos_token == "<s>" and part.lora is None and part.trained_keys() == set()
    assert not any(p.requires_grad for p in part.parameters()) and part.state_dict() == {}
    part.train()
    assert not part.training  # frozen, nothing of its own to train: stays in eval mode
    assert part.spec()["fingerprint"] and part.spec()["extra_tokens"] == 0 and part.spec()["lora"] is None

    broken = str(tmp_path / "broken")
    shutil.copytree(folder, broken)
    state = load_file(f"{broken}/model.safetensors")
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, f"{broken}/model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"part 'lm'.*{broken}.*model\.layers\.1\.mlp\.down_proj\.weight"):
        build_part(spec(broken), "lm")
    with pytest.raises(FileNotFoundError, match=rf"part 'lm'.*AutoModelForCausalLM.*{tmp_path / 'nowhere'}"):
        build_part(spec(str(tmp_path / "nowhere")), "lm")
    tiny_hf.t5(str(tmp_path / "t5"))
    with pytest.raises(ValueError, match=rf"part 'lm'.*{tmp_path / 't5'}.*'t5'.*causal LM"):
        build_part(spec(str(tmp_path / "t5")), "lm")


def test_extra_tokens_add_mean_rows_deterministically_and_options_are_checked(llama):
    folder, ref = llama
    rng = torch.get_rng_state()
    a = build_part(spec(folder, extra_tokens=5, frozen=False), "lm")
    assert torch.equal(rng, torch.get_rng_state())  # the new rows draw nothing from the global RNG
    b = build_part(spec(folder, extra_tokens=5, frozen=False), "lm")
    emb, head = a.model.get_input_embeddings().weight, a.model.get_output_embeddings().weight
    assert a.base_vocab == 34 and a.vocab_size == 39 and emb.shape == head.shape == (39, 32)
    for new, old in ((emb, ref.get_input_embeddings().weight), (head, ref.get_output_embeddings().weight)):
        assert torch.equal(new[:34], old) and torch.allclose(new[34:], old.mean(0).expand(5, -1))
    sa, sb = a.state_dict(), b.state_dict()
    assert len(sa) > 20 and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(p.requires_grad for p in a.parameters())  # frozen: false, a full fine-tune
    with torch.no_grad():
        assert a.logits(torch.tensor([[3, 36, 38]]))[0].shape == (1, 3, 39)
    with pytest.raises(ValueError, match=r"part 'lm'.*extra_tokens=5.*never train"):
        build_part(spec(folder, extra_tokens=5), "lm")
    with pytest.raises(ValueError, match=r"part 'lm'.*unknown lora key 'rank'"):
        build_part(spec(folder, lora={"rank": 8}), "lm")
    with pytest.raises(ValueError, match=r"part 'lm'.*lora with frozen: false"):
        build_part(spec(folder, lora={}, frozen=False), "lm")
    with pytest.raises(ValueError, match=r"part 'lm'.*LM head \('lm_head'\).*modules_to_save"):
        build_part(spec(folder, extra_tokens=2, lora={"modules_to_save": ["embed_tokens"]}), "lm")


def lm_loss(part, ids):
    logits, _ = part.logits(ids)
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def test_lora_trains_only_the_adapters_and_modules_to_save(llama):
    folder, _ = llama
    part = build_part(spec(folder, extra_tokens=3, lora={"r": 4}), "lm")
    assert part.lora == {"r": 4, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj",
                         "gate_proj", "up_proj", "down_proj"], "modules_to_save": ["embed_tokens", "lm_head",
                         "input_layernorm", "post_attention_layernorm", "norm"]}
    trained = part.trained_keys()
    assert len(trained) == 7 * 2 * 2 + 4 + 3  # A and B of 7 projections x 2 layers; 2 norms x 2 layers, norm, embed, head
    assert all(".lora_A.default." in k or ".lora_B.default." in k or ".modules_to_save.default." in k for k in trained)
    assert {n for n, p in part.named_parameters() if p.requires_grad} == trained
    assert set(part.state_dict()) == trained  # what its owner saves
    part.train()
    assert part.training and part.model.base_model.model.model.layers[0].self_attn.q_proj.lora_dropout.default.training
    before = {k: v.clone() for k, v in part.state_dict(keep_vars=False).items()}
    full_before = {k: v.clone() for k, v in part.model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in part.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.cat([IDS, torch.tensor([[34, 35, 36, 34], [36, 35, 34, 1]])], 1)  # the new ids in and out
    lm_loss(part, ids).backward()
    opt.step()
    full_after = part.model.state_dict()
    changed = {f"model.{k}" for k in full_before if not torch.equal(full_before[k], full_after[k])}
    assert changed == trained == set(before)
    new_rows = part.model.base_model.model.model.embed_tokens.modules_to_save.default.weight[34:]
    assert not torch.equal(new_rows, before["model.base_model.model.model.embed_tokens.modules_to_save.default.weight"][34:])
    part.eval()
    assert not part.training


def test_grad_checkpointing_gives_the_same_gradients(llama):
    folder, _ = llama
    parts = [build_part(spec(folder, lora={"r": 4, "dropout": 0.0}, grad_checkpointing=g), "lm") for g in (False, True)]
    parts[1].load_state_dict(parts[0].state_dict())
    with torch.no_grad():
        for p in parts:
            p.model.base_model.model.model.layers[0].mlp.down_proj.lora_B.default.weight.fill_(0.1)
    assert [any(getattr(m, "gradient_checkpointing", False) for m in p.modules()) for p in parts] == [False, True]
    grads = []
    for p in parts:
        p.train()
        lm_loss(p, IDS).backward()
        grads.append({n: q.grad for n, q in p.named_parameters() if q.requires_grad})
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


class LMOwner(VistokModel):
    """A minimal owner of a causal_lm part and one weight of its own."""

    def __init__(self, lm: dict | None = None):
        super().__init__()
        self.lm = build_part(lm, "lm")
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, ids):
        return self.lm.logits(ids)[0] * self.scale


if "test_lm_owner" not in MODELS:
    register_model("test_lm_owner")(LMOwner)


def test_owner_saves_only_the_adapters_and_loads_them_back(llama, tmp_path):
    folder, _ = llama
    owner = MODELS["test_lm_owner"](lm=spec(folder, extra_tokens=2, lora={"r": 4}))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # as if trained: adapters and the modules_to_save copies away from their init
        for p in owner.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    owner.save_pretrained(str(tmp_path / "saved"))
    saved = load_file(str(tmp_path / "saved" / "model.safetensors"))
    assert set(saved) == {"scale"} | {f"lm.{k}" for k in owner.lm.trained_keys()}
    assert not any("base_layer" in k or "original_module" in k for k in saved)
    cfg = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert cfg["lm"]["path"] == folder and cfg["lm"]["fingerprint"] and cfg["lm"]["extra_tokens"] == 2
    assert cfg["lm"]["lora"]["r"] == 4 and cfg["lm"]["lora"]["alpha"] == 32
    assert not os.path.exists(tmp_path / "saved" / "parts")  # the base stays in its folder
    loaded = VistokModel.from_pretrained(str(tmp_path / "saved"))
    assert type(loaded) is LMOwner and not loaded.training
    ids = torch.tensor([[3, 4, 34, 35, 7]])
    with torch.no_grad():
        assert torch.equal(loaded(ids), owner.eval()(ids))
    state = loaded.state_dict()
    gone = next(k for k in state if ".lora_A." in k)
    del state[gone]
    with pytest.raises(RuntimeError, match=f"Missing key.*{gone}"):
        loaded.load_state_dict(state, strict=True)
    del saved[gone]
    save_file(saved, str(tmp_path / "saved" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"missing.*{gone}"):
        VistokModel.from_pretrained(str(tmp_path / "saved"))


def test_kv_cache_continues_the_sequence(llama):
    folder, _ = llama
    part = build_part(spec(folder, extra_tokens=2, lora={"r": 4}), "lm")
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for n, p in part.named_parameters():
            if ".lora_B." in n:  # adapters that change the outputs
                p.normal_(0, 0.1, generator=g)
        ids = torch.cat([IDS, torch.tensor([[34, 35], [35, 34]])], 1)
        full, _ = part.logits(ids)
        cache = part.new_cache()
        steps = [part.logits(ids[:, :4], cache)[0]]
        for t in range(4, ids.shape[1]):
            out, cache = part.logits(ids[:, t:t + 1], cache)
            steps.append(out)
        assert cache.get_seq_length() == ids.shape[1]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5) and full.dtype == torch.float32
