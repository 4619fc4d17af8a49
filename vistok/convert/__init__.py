"""Converters from official checkpoints to vistok releases (``convert.py`` is the command line).

    llamagen_vq   LlamaGen VQ-16/VQ-8 tokenizers (``vq_ds16_c2i.pt``...) -> ``vqgan``, exact
    llamagen_gpt  LlamaGen class-conditional GPTs (``c2i_B_256.pt``...) -> ``ar`` (weights; see its notes)
    tokenflow     TokenFlow tokenizers (``tokenflow_clipb_32k_enhanced.pt``...) -> ``tokenflow``: decodes codes
                  exactly; with ``--semantic-encoder DIR`` (the tower's architecture folder) it encodes too

Every file is read weights-only (``torch.load(weights_only=True)`` or safetensors): nothing is unpickled.
"""
from vistok.convert.common import read_checkpoint  # noqa: F401
