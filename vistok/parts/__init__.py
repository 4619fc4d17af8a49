"""Pretrained parts from local folders (transformers, timm, diffusers): vision towers, text encoders, BLIP-2's ViT
and Q-Former, SD components, a causal LM with new tokens and LoRA (``causal_lm``). A model names one in its config
as ``{type: clip_vision, path: DIR, ...}``; ``build_part`` makes it (``vistok.parts.base``). README, "Pretrained
parts"."""
