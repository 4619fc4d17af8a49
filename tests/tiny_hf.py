"""Tiny randomly initialised models of the real transformers / timm classes, saved with ``save_pretrained`` the way
the Hub folders users copy are laid out (nothing is downloaded)."""
from __future__ import annotations

import os

import torch

WORDS = "a an the red green blue yellow magenta cyan circle square triangle circles squares triangles and left right " \
        "of above below one two three four five six zero digit photo".split()


def _quiet():
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def word_tokenizer(folder: str, specials=("<pad>", "</s>", "<unk>"), bos: str | None = None):
    """A word-level fast tokenizer (what AutoTokenizer loads from tokenizer.json)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(list(specials) + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = {"bos_token": bos} if bos else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", **extra)
    fast.save_pretrained(folder)
    return fast


def clip_vision(folder: str, image_size: int = 32, patch: int = 8, hidden: int = 32, projection: int = 16, seed: int = 0):
    """A CLIPVisionModelWithProjection folder (the layout of a CLIP vision-with-projection copy) + its processor."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    _quiet()
    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=patch, projection_dim=projection, hidden_act="quick_gelu")
    model = CLIPVisionModelWithProjection(cfg).eval()
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return model


def siglip_vision(folder: str, image_size: int = 32, patch: int = 8, hidden: int = 32, seed: int = 0):
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    _quiet()
    torch.manual_seed(seed)
    cfg = SiglipVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3, num_attention_heads=2,
                             image_size=image_size, patch_size=patch)
    model = SiglipVisionModel(cfg).eval()
    model.save_pretrained(folder)
    SiglipImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return model


def timm_vit(folder: str, image_size: int = 32, patch: int = 8, dim: int = 32, seed: int = 0):
    """A timm folder as save_for_hf writes it (config.json + model.safetensors), with a classifier head."""
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    args = dict(img_size=image_size, patch_size=patch, depth=2, embed_dim=dim, num_heads=2, num_classes=5)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).eval()
    save_for_hf(model, folder, model_args=args, safe_serialization=True)
    return model


def blip2(folder: str, image_size: int = 32, patch: int = 8, hidden: int = 32, seed: int = 0):
    """A Blip2ForImageTextRetrieval folder (the layout of Salesforce/blip2-itm-vit-g) + processor and tokenizer."""
    from transformers import Blip2Config, Blip2ForImageTextRetrieval, BlipImageProcessor

    _quiet()
    torch.manual_seed(seed)
    cfg = Blip2Config(
        vision_config=dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=patch),
        qformer_config=dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                            encoder_hidden_size=hidden, vocab_size=len(WORDS) + 4, max_position_embeddings=32,
                            use_qformer_text_input=True),
        num_query_tokens=4, image_text_hidden_size=16)
    model = Blip2ForImageTextRetrieval(cfg).eval()
    with torch.no_grad():
        model.query_tokens.normal_()
    model.save_pretrained(folder)
    BlipImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(folder)
    word_tokenizer(folder, specials=("<pad>", "[CLS]", "<unk>", "</s>"), bos="[CLS]")
    return model


def t5(folder: str, d_model: int = 16, seed: int = 0):
    """A T5ForConditionalGeneration folder (the layout of google/flan-t5-*) + tokenizer."""
    from transformers import T5Config, T5ForConditionalGeneration

    _quiet()
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(WORDS) + 3, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=2)
    model = T5ForConditionalGeneration(cfg).eval()
    model.save_pretrained(folder)
    word_tokenizer(folder)
    return model


def clip_text(folder: str, hidden: int = 16, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    _quiet()
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=len(WORDS) + 3, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, eos_token_id=1, pad_token_id=0)
    model = CLIPTextModel(cfg).eval()
    model.save_pretrained(folder)
    word_tokenizer(folder)
    return model


LLAMA_SPECIALS = ("<pad>", "</s>", "<unk>", "<s>")


def tiny_llama(folder: str, hidden: int = 32, seed: int = 0):
    """A LlamaForCausalLM folder (the layout of a Llama / Vicuna copy, untied LM head) + its tokenizer (<s> bos)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _quiet()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(LLAMA_SPECIALS) + len(WORDS), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=0, eos_token_id=1, bos_token_id=3, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(folder)
    word_tokenizer(folder, specials=LLAMA_SPECIALS, bos="<s>")
    return model


VICUNA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000)


def llama_config_folder(folder: str, **dims):
    """A Llama folder holding only its config (Vicuna-7B's dimensions by default) and the word tokenizer: what a
    paper config needs to build on the meta device."""
    from transformers import LlamaConfig

    LlamaConfig(**{**VICUNA_7B, **dims}, tie_word_embeddings=False, eos_token_id=1, bos_token_id=3).save_pretrained(folder)
    word_tokenizer(folder, specials=LLAMA_SPECIALS, bos="<s>")
    return folder


def saved_tensors(folder: str) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(folder, f)))
    return out
