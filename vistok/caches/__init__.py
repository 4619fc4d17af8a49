"""Token caches: datasets of codes / latents encoded once by a released tokenizer."""
