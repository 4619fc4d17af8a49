"""A causal language model from a transformers folder (``AutoModelForCausalLM``: Llama, Vicuna, Qwen, ...) with the
tokenizer of the same folder, optionally grown by new tokens and trained through LoRA adapters (``peft``): the LLM
of a SEED-LLaMA-style model that reads and writes image codes.

    lm: {type: causal_lm, path: checkpoints/vicuna-7b-v1.1, extra_tokens: 8194, lora: {r: 16}, dtype: bfloat16}

``extra_tokens: N`` adds N rows to the input embeddings and to the (untied) LM head, at ids ``base_vocab ..
base_vocab + N - 1`` (``base_vocab``: the folder's embedding rows), each initialised to the mean of the old rows
(deterministic: two builds of a folder are equal). The owner gives the new ids their meaning (image codes, markers).

``lora: {r, alpha, dropout, target_modules, modules_to_save}`` (any subset; SEED-LLaMA's defaults: r 16, alpha 32,
dropout 0.05, the attention and MLP projections, and ``embed_tokens``, ``lm_head`` and the norms trained in full,
without which new tokens never learn) wraps the model with ``peft.get_peft_model``. With ``frozen: true`` (the
default) the base weights are frozen and stay in the folder (the owner's config records path and fingerprint);
the adapters and the ``modules_to_save`` copies train, are in the owner's ``state_dict`` (``trained_keys``) and
the part follows train / eval mode (LoRA dropout). ``frozen: false`` without ``lora`` fine-tunes everything (the
whole part saved with its owner); ``frozen: true`` with ``extra_tokens`` needs ``lora`` (new rows must train).

``logits(ids, cache) -> (B, T, V float32 logits, cache)``: one forward; ``cache`` is None, or ``new_cache()``'s
``DynamicCache``, continued by each call (positions follow its length). ``grad_checkpointing: true`` recomputes
the layers' activations in the backward pass (training mode only).
"""
from __future__ import annotations

import inspect
import warnings

import torch
import torch.nn as nn

from vistok.parts.base import Part
from vistok.parts.blip2 import load_tokenizer
from vistok.parts.hf import load_hf_model, quiet_transformers
from vistok.parts.text import TOKENIZER_FILES
from vistok.registry import register_part
from vistok.schema import NonNegInt

LORA_DEFAULTS = {"r": 16, "alpha": 32, "dropout": 0.05,
                 "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                 "modules_to_save": ["embed_tokens", "lm_head", "input_layernorm", "post_attention_layernorm", "norm"]}


@register_part("causal_lm")
class CausalLM(Part):
    """A transformers causal LM read strictly from ``path`` (+ its tokenizer, ``self.tokenizer``), with
    ``extra_tokens`` new embedding / head rows (mean-initialised, at ids ``base_vocab ..``) and optional LoRA.

    ``lora`` (None: no adapters): ``{r: 16, alpha: 32, dropout: 0.05, target_modules: [q,k,v,o,gate,up,down
    _proj], modules_to_save: [embed_tokens, lm_head, input_layernorm, post_attention_layernorm, norm]}``, any
    subset. A frozen part with ``lora`` trains and saves only the adapters and the ``modules_to_save`` copies
    (``trained_keys``); the base weights are read from the folder again when its owner is loaded.

    Attributes: ``model`` (the transformers model, or the ``peft`` model wrapping it), ``tokenizer``,
    ``base_vocab`` (the folder's embedding rows), ``vocab_size`` (``base_vocab + extra_tokens``), ``dim``
    (hidden size), ``extra_tokens``, ``lora`` (the filled settings or None), ``grad_checkpointing``."""

    expected, model_class = "causal LM", "AutoModelForCausalLM"
    config_files = ("config.json", "generation_config.json", "tokenizer.model", "added_tokens.json",
                    "chat_template.jinja") + TOKENIZER_FILES

    def __init__(self, path: str, extra_tokens: NonNegInt = 0, lora: dict | None = None,
                 grad_checkpointing: bool = False, **base):
        super().__init__(path, **base)
        self.extra_tokens, self.grad_checkpointing = int(extra_tokens), bool(grad_checkpointing)
        self.lora_in, self.lora = lora, None
        self._trained: set[str] = set()
        self.options = {"extra_tokens": self.extra_tokens, "lora": lora, "grad_checkpointing": self.grad_checkpointing}

    # ---- building -----------------------------------------------------------------------------
    def _check_options(self) -> None:
        key = self.config_key or self.registered_name
        if self.extra_tokens < 0:
            raise ValueError(f"part '{key}': extra_tokens={self.extra_tokens}; expected 0 or more")
        lora = self.lora_in
        if lora is None:
            if self.frozen and self.extra_tokens:
                raise ValueError(f"part '{key}': extra_tokens={self.extra_tokens} on a frozen causal_lm without lora: "
                                 f"the new rows would never train; add lora: {{}} (adapters + the embeddings and "
                                 f"head trained in full) or set frozen: false")
            return
        if not isinstance(lora, dict):
            raise ValueError(f"part '{key}': lora={lora!r}; expected a mapping with keys {', '.join(LORA_DEFAULTS)}")
        unknown = sorted(set(lora) - set(LORA_DEFAULTS))
        if unknown:
            raise ValueError(f"part '{key}': unknown lora key '{unknown[0]}'; expected {', '.join(LORA_DEFAULTS)}")
        if not self.frozen:
            raise ValueError(f"part '{key}': lora with frozen: false; LoRA trains adapters over a frozen base "
                             f"(frozen: true, only the adapters saved), frozen: false without lora fine-tunes it all")
        filled = {**LORA_DEFAULTS, **lora}
        if isinstance(filled["r"], bool) or not isinstance(filled["r"], int) or filled["r"] < 1:
            raise ValueError(f"part '{key}': lora.r={filled['r']!r}; expected a positive integer")
        for name in ("alpha", "dropout"):
            if isinstance(filled[name], bool) or not isinstance(filled[name], (int, float)):
                raise ValueError(f"part '{key}': lora.{name}={filled[name]!r}; expected a number")
        if not 0 <= filled["dropout"] < 1:
            raise ValueError(f"part '{key}': lora.dropout={filled['dropout']!r}; expected a value in [0, 1)")
        for name in ("target_modules", "modules_to_save"):
            v = filled[name]
            if not isinstance(v, (list, tuple)) or not all(isinstance(m, str) for m in v):
                raise ValueError(f"part '{key}': lora.{name}={v!r}; expected a list of module names")
            filled[name] = list(v)
        self.lora = filled
        self.options = {**self.options, "lora": filled}

    def load(self, folder: str, read_weights: bool) -> None:
        self._check_options()
        cls = causal_lm_class(folder, self.config_key)
        model = load_hf_model(cls, folder, read_weights, self.torch_dtype, self.config_key)
        object.__setattr__(self, "tokenizer", load_tokenizer(folder))  # not a module
        self.base_vocab = model.get_input_embeddings().num_embeddings
        self.vocab_size = self.base_vocab + self.extra_tokens
        self.dim = model.config.get_text_config().hidden_size
        if self.extra_tokens:
            add_token_rows(model, self.extra_tokens)
        params = inspect.signature(model.forward).parameters  # transformers 5.x renamed past_key_values to cache
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        if self.grad_checkpointing:  # transformers checkpoints only in training mode
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.lora is not None:
            model = self._wrap(model)
        self.model = model
        self._trained = {f"model.{n}" for n, p in model.named_parameters() if p.requires_grad} if self.lora else set()

    def _wrap(self, model):
        from peft import LoraConfig, get_peft_model

        lora, key = self.lora, self.config_key
        if self.extra_tokens:
            names = {m: n for n, m in model.named_modules()}
            for what, module in (("input embeddings", model.get_input_embeddings()),
                                 ("LM head", model.get_output_embeddings())):
                name = names.get(module, "")
                if module is not None and not any(name.endswith(t) for t in lora["modules_to_save"]):
                    raise ValueError(f"part '{key}': extra_tokens={self.extra_tokens} but the {what} ('{name}') are "
                                     f"not in lora.modules_to_save {lora['modules_to_save']}: the new rows would "
                                     f"never train")
        cfg = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                         target_modules=lora["target_modules"], modules_to_save=lora["modules_to_save"] or None,
                         task_type="CAUSAL_LM")
        with warnings.catch_warnings(), quiet_transformers():
            warnings.simplefilter("ignore", FutureWarning)  # peft reads a renamed transformers attribute
            try:
                return get_peft_model(model, cfg)
            except ValueError as e:
                raise ValueError(f"part '{key}': lora does not fit the {type(model).__name__} in '{self.path}' "
                                 f"({e})") from e

    # ---- the Part interface -------------------------------------------------------------------
    def trained_keys(self) -> set[str]:
        return self._trained

    # ---- use ----------------------------------------------------------------------------------
    def new_cache(self):
        """An empty KV cache for ``logits``."""
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def logits(self, ids: torch.Tensor, cache=None) -> tuple[torch.Tensor, object]:
        """B, T float32 next-token logits over ``vocab_size`` for the ids ``ids`` (B, T long), continuing
        ``cache`` (``new_cache()``, updated in place and returned) when given; ``(logits, None)`` without one."""
        out = self.model(input_ids=ids, use_cache=cache is not None, **{self._cache_arg: cache})
        return out.logits.float(), cache  # a DynamicCache is extended in place


def causal_lm_class(folder: str, key: str):
    """The transformers ``...ForCausalLM`` class of the folder's ``config.json``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"part '{key}': cannot read a transformers config from '{folder}' ({e})") from e
    try:
        return AutoModelForCausalLM._model_mapping[type(config)]
    except KeyError:
        raise ValueError(f"part '{key}': '{folder}' holds a '{config.model_type}' model, which transformers has no "
                         f"causal LM class (AutoModelForCausalLM) for") from None


@torch.no_grad()
def add_token_rows(model: nn.Module, n: int) -> None:
    """``n`` new rows of the input embeddings and the LM head, each the mean of the old rows (bias likewise)."""
    old = model.get_input_embeddings().num_embeddings
    weight = model.get_input_embeddings().weight
    devices = [weight.device] if weight.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), quiet_transformers():  # resizing draws random rows, replaced below
        model.resize_token_embeddings(old + n, mean_resizing=False)
    seen = set()
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is None or id(module.weight) in seen:  # no head, or one tied to the embeddings
            continue
        seen.add(id(module.weight))
        for t in (module.weight, getattr(module, "bias", None)):
            if t is not None:
                t[old:] = t[:old].float().mean(0, keepdim=True).to(t.dtype)
