"""Pretrained parts from local folders: tiny random models of the real transformers / timm classes saved with
save_pretrained, loaded through vistok's config path; weights and outputs equal the class's own, frozen parts
have no gradients and stay out of the owner's weights, fine-tuned ones are saved, a moved release loads with
remapped part paths, wrong folders are named."""
import json
import os
import shutil

import pytest
import torch

from tests import tiny_hf
from vistok.parts.base import build_part

X = torch.rand(2, 3, 32, 32) * 2 - 1


def clip_pixels(x):
    from transformers import CLIPImageProcessor

    p = CLIPImageProcessor()
    mean, std = torch.tensor(p.image_mean).view(1, 3, 1, 1), torch.tensor(p.image_std).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / std


def assert_frozen_and_outside(part):
    assert not any(p.requires_grad for p in part.parameters())
    assert part.state_dict() == {} and not part.training


def test_clip_vision_parts_equal_the_class_and_are_frozen(tmp_path):
    ref = tiny_hf.clip_vision(str(tmp_path / "clip"))
    part = build_part({"type": "clip_vision", "path": str(tmp_path / "clip"), "feature": "hidden_states[-2]"}, "teacher")
    with torch.no_grad():
        out = ref(pixel_values=clip_pixels(X), output_hidden_states=True)
        assert torch.equal(part.tokens(X), out.hidden_states[-2][:, 1:])
        assert part.grid == 4 and part.tokens(X).shape == (2, 16, 32)
        proj = build_part({"type": "clip_vision_projection", "path": str(tmp_path / "clip"), "post_layernorm": True,
                           "project": True}, "t")
        want = ref.visual_projection(ref.vision_model.post_layernorm(out.last_hidden_state[:, 1:]))
        assert torch.allclose(proj.tokens(X), want, atol=1e-6) and proj.out_dim == 16
        assert torch.allclose(proj.embed(X), out.image_embeds, atol=1e-6)
    saved = tiny_hf.saved_tensors(str(tmp_path / "clip"))
    own = {k.removeprefix("vision_model."): v for k, v in part.model.state_dict().items()}
    assert len(own) > 20 and all(torch.equal(v, saved["vision_model." + k]) for k, v in own.items())
    assert_frozen_and_outside(part)
    part.train()
    assert not part.training  # a frozen part stays in eval mode


def test_siglip_and_timm_parts(tmp_path):
    sig = tiny_hf.siglip_vision(str(tmp_path / "siglip"))
    part = build_part({"type": "siglip_vision", "path": str(tmp_path / "siglip"), "feature": "hidden_states[-2]"}, "s")
    with torch.no_grad():
        assert torch.equal(part.tokens(X), sig(pixel_values=X, output_hidden_states=True).hidden_states[-2])
    assert_frozen_and_outside(part)
    vit = tiny_hf.timm_vit(str(tmp_path / "timm"))
    t = build_part({"type": "timm", "path": str(tmp_path / "timm")}, "v")
    with torch.no_grad():  # timm's pretrained_cfg mean/std are 0.5: the [-1, 1] image as is
        assert torch.equal(t.tokens(X), vit.forward_features(X)[:, 1:])
        assert torch.equal(t.embed(X), vit.forward_head(vit.forward_features(X), pre_logits=True))
        blk = build_part({"type": "timm", "path": str(tmp_path / "timm"), "feature": "blocks[0]"}, "v")
        assert torch.equal(blk.tokens(X), vit.forward_intermediates(X, indices=[0], output_fmt="NLC",
                                                                     intermediates_only=True)[0])
    assert t.grid == 4 and t.dim == 32
    assert_frozen_and_outside(t)


def test_blip2_parts_load_by_prefix_from_the_composite_folder(tmp_path):
    folder = str(tmp_path / "blip2")
    ref = tiny_hf.blip2(folder)
    vis = build_part({"type": "blip2_vision", "path": folder}, "vit")
    qf = build_part({"type": "blip2_qformer", "path": folder, "text": True}, "qformer")
    saved = tiny_hf.saved_tensors(folder)
    assert all(torch.equal(v, saved["vision_model." + k]) for k, v in vis.model.state_dict().items())
    assert all(torch.equal(v, saved["qformer." + k]) for k, v in qf.qformer.state_dict().items())
    assert torch.equal(qf.query_tokens, saved["query_tokens"]) and saved["query_tokens"].abs().sum() > 0
    assert torch.equal(qf.text_projection.weight, saved["text_projection.weight"])
    ids, mask = torch.tensor([[1, 8, 12], [1, 9, 13]]), torch.ones(2, 3, dtype=torch.long)
    with torch.no_grad():
        out = ref(pixel_values=vis.preprocess(X), input_ids=ids, attention_mask=mask, use_image_text_matching_head=False)
        feats = vis.features(X)
        assert torch.equal(feats, out.vision_model_output.last_hidden_state)  # after post_layernorm (LAVIS ln_vision)
        assert torch.allclose(qf.image_embeds(feats), out.image_embeds, atol=1e-6)
        assert torch.allclose(qf.text_embeds(ids, mask), out.text_embeds, atol=1e-6)
    assert qf.tokenizer is not None
    # transformers' own composite loading leaves random weights: what the prefix loading is for
    from transformers import Blip2VisionModel

    tiny_hf._quiet()
    naive = Blip2VisionModel.from_pretrained(folder)
    assert not torch.equal(naive.embeddings.patch_embedding.weight, saved["vision_model.embeddings.patch_embedding.weight"])


def test_blip2_qformer_text_mode_needs_the_retrieval_weights(tmp_path):
    folder = str(tmp_path / "blip2")
    tiny_hf.blip2(folder)
    from safetensors.torch import load_file, save_file

    state = {k: v for k, v in load_file(f"{folder}/model.safetensors").items() if not k.startswith("text_projection")}
    save_file(state, f"{folder}/model.safetensors")
    with pytest.raises(ValueError, match="text_projection"):
        build_part({"type": "blip2_qformer", "path": folder, "text": True}, "qformer")
    assert build_part({"type": "blip2_qformer", "path": folder}, "qformer").num_queries == 4


def test_text_encoders_equal_the_class(tmp_path):
    from transformers import CLIPTextModel, T5EncoderModel

    tiny_hf.t5(str(tmp_path / "t5"))
    t5 = build_part({"type": "t5_encoder", "path": str(tmp_path / "t5"), "max_length": 8}, "text_encoder")
    feats = t5.encode(["a red circle", "two blue squares above a green triangle"])
    ids, mask = t5.tokenize(["a red circle"])
    assert mask[0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    ref = T5EncoderModel.from_pretrained(str(tmp_path / "t5")).eval()
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).last_hidden_state[0, :3]
    assert torch.allclose(feats[0, :3], want, atol=1e-6) and feats[0, 3:].abs().sum() == 0 and feats.shape == (2, 8, 16)
    assert_frozen_and_outside(t5)
    tiny_hf.clip_text(str(tmp_path / "clip_text"))
    ct = build_part({"type": "clip_text", "path": str(tmp_path / "clip_text"), "max_length": 12,
                     "feature": "hidden_states[-2]"}, "text_encoder")
    ids, mask = ct.tokenize(["a red circle"])
    with torch.no_grad():
        want = CLIPTextModel.from_pretrained(str(tmp_path / "clip_text")).eval()(
            input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
    assert torch.allclose(ct.encode(["a red circle"]), want * mask[..., None], atol=1e-6)


def test_wrong_or_missing_folders_name_the_key_path_and_class(tmp_path):
    tiny_hf.siglip_vision(str(tmp_path / "siglip"))
    with pytest.raises(FileNotFoundError, match=r"part 'teacher'.*CLIPVisionModel.*nowhere"):
        build_part({"type": "clip_vision", "path": str(tmp_path / "nowhere")}, "teacher")
    with pytest.raises(ValueError, match=r"part 'teacher'.*siglip.*CLIPVisionModel"):
        build_part({"type": "clip_vision", "path": str(tmp_path / "siglip")}, "teacher")
    with pytest.raises(ValueError, match="unknown part type 'clip'"):
        build_part({"type": "clip", "path": str(tmp_path / "siglip")}, "teacher")
    with pytest.raises(ValueError, match="feature="):
        build_part({"type": "clip_vision", "path": str(tmp_path / "siglip"), "feature": "layer5"}, "teacher")


def tokenflow_kwargs(clip: str, frozen: bool) -> dict:
    return dict(image_size=32, in_channels=1, ch=8, ch_mult=[1, 2, 2, 2], num_res_blocks=1, z_channels=16,
                attn_mid=False, codebook_size=64, dim_sem=8, dim_pix=4, scales=[1, 2, 4], sem_decoder_depth=1,
                sem_heads=2, teacher_dim=16,
                semantic_encoder={"type": "clip_vision", "path": clip, "frozen": frozen, "mean": [0.5] * 3, "std": [0.5] * 3},
                teacher={"type": "clip_vision_projection", "path": clip, "post_layernorm": True, "project": True})


def test_fine_tuned_part_is_saved_and_a_moved_release_loads(tmp_path):
    from vistok.tokenizers.tokenflow import TokenFlow

    clip = str(tmp_path / "clip")
    tiny_hf.clip_vision(clip)
    torch.manual_seed(0)
    model = TokenFlow(**tokenflow_kwargs(clip, frozen=False))
    assert any(k.startswith("semantic_encoder.model.") for k in model.state_dict())
    assert all(p.requires_grad for p in model.semantic_encoder.parameters())
    with torch.no_grad():
        model.semantic_encoder.tower.pre_layrnorm.weight.mul_(1.5)  # "fine-tuned" away from the folder
    model.save_pretrained(str(tmp_path / "tf"))
    cfg = json.loads((tmp_path / "tf" / "config.json").read_text())
    assert cfg["semantic_encoder"]["fingerprint"] and cfg["teacher"]["fingerprint"]
    assert sorted(os.listdir(tmp_path / "tf" / "parts" / "semantic_encoder")) == ["config.json", "preprocessor_config.json"]
    shutil.move(str(tmp_path / "tf"), str(tmp_path / "moved"))
    shutil.rmtree(clip)  # the original folder is gone: the release carries the fine-tuned tower
    loaded = TokenFlow.from_pretrained(str(tmp_path / "moved"))
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert torch.equal(loaded.encode(x), model.eval().encode(x))


def test_frozen_part_stays_out_and_is_remapped_on_another_machine(tmp_path):
    from vistok.modeling import VistokModel
    from vistok.tokenizers.tokenflow import TokenFlow

    clip = str(tmp_path / "clip")
    tiny_hf.clip_vision(clip)
    model = TokenFlow(**tokenflow_kwargs(clip, frozen=True))
    assert not any(k.startswith("semantic_encoder") for k in model.state_dict())
    model.save_pretrained(str(tmp_path / "tf"))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "tf" / "model.safetensors"), "pt") as f:
        assert not any(k.startswith("semantic_encoder") for k in f.keys())
    shutil.move(clip, str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match=r"part 'semantic_encoder'.*clip"):
        VistokModel.from_pretrained(str(tmp_path / "tf"))
    loaded = VistokModel.from_pretrained(str(tmp_path / "tf"), parts={"semantic_encoder": str(tmp_path / "elsewhere"),
                                                                       "teacher": str(tmp_path / "elsewhere")})
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert torch.equal(loaded.encode(x), model.eval().encode(x))
    assert loaded.config_dict()["semantic_encoder"]["path"] == str(tmp_path / "elsewhere")
    tiny_hf.clip_vision(str(tmp_path / "other"), seed=1, hidden=48)  # another model: another fingerprint
    with pytest.raises(ValueError, match="fingerprint"):
        VistokModel.from_pretrained(str(tmp_path / "tf"), parts={"semantic_encoder": str(tmp_path / "other")})
    with pytest.raises(ValueError, match="name no pretrained part"):
        VistokModel.from_pretrained(str(tmp_path / "tf"), parts={"vae": str(tmp_path / "other")})


def test_part_entries_are_validated_with_the_config(tmp_path):
    from vistok.config import ConfigError, load_config
    from tests.conftest import ROOT

    base = os.path.join(ROOT, "configs/tokenflow/mnist.yaml")
    with pytest.raises(ConfigError, match="model.semantic_encoder.*unknown key 'layer'"):
        load_config(base, ["model.semantic_encoder={type: clip_vision, path: x, layer: 3}"])
    with pytest.raises(ConfigError, match="dtype"):
        load_config(base, ["model.semantic_encoder={type: clip_vision, path: x, dtype: float64}"])
