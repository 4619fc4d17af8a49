#!/usr/bin/env python
"""The README's optimiser table, from the configs themselves: optimiser, lr, betas, weight decay and which
tensors get it, schedule, and the paper code each paper config follows. tests/test_optim.py checks that the
README holds exactly this table.

    python scripts/optimizer_table.py          # print it
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# config -> the official code whose optimiser it reproduces (read at the commits named in the README)
FOLLOWS = {
    "ar/imagenet256": "LlamaGen `autoregressive/train/train_c2i.py` `creat_optimizer` (nanoGPT's rule)",
    "vqgan/imagenet256": "LlamaGen `tokenizer/tokenizer_image/vq_train.py` (`--weight-decay` is parsed, never used)",
    "tokenflow/imagenet256": "TokenFlow `tokenflow/tokenizer/vq_train.py` (LlamaGen's; default path, no `--kmeans`)",
    "xar/imagenet256": "xAR `main_mar.py` + `util/misc.py` `add_weight_decay` (MAR's)",
    "catanet/div2k_x2": "CATANet `options/train/train_CATANet_x2_scratch.yml` (BasicSR `optim_g`, MultiStepLR)",
    "catanet/div2k_x3": "CATANet `options/train/train_CATANet_x3_finetune.yml`",
    "catanet/div2k_x4": "CATANet `options/train/train_CATANet_x4_finetune.yml`",
    "tokenunify/paper_pretrain": "TokenUnify `src/main_pretrain.py` (timm 0.3 `add_weight_decay`)",
    "tokenunify/paper_seg": "TokenUnify fine-tuning (its optimiser not verified; the pretraining rule)",
    "seed/paper_stage1": "SEED `SEED_Tokenizer/lavis/projects/blip2/train/pretrain_qformer.yaml` (LAVIS)",
    "seed/paper_stage2": "SEED `SEED_Tokenizer/lavis/projects/blip2/train/pretrain_codebook.yaml` (LAVIS)",
    "seed/decoder_paper": "nothing trains (the frozen SD-2.1-unCLIP pipeline); the train block is unused",
    "seed_llama/paper": "vistok's choice (SEED-LLaMA's training code is not public; its LoRA settings are used)",
    "layton/paper_stage1": "vistok's choice (LaCToK releases inference code only; its LoRA settings are used)",
    "layton/paper_stage2": "vistok's choice (as stage 1; 15,000 steps as LaCToK's released iteration 14999)",
    "layton/gen_paper": "LlamaGen's T2I recipe (LaytonGen's is not public)",
}


def _groups(t) -> str:
    if t.weight_decay == 0:
        return "none decayed"
    return "tensors of 2+ dims; not 1-D (biases, norms)"


def rows():
    from vistok.config import load_config

    out = []
    for family in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        folder = os.path.join(ROOT, "configs", family)
        if family == "accelerate" or not os.path.isdir(folder):
            continue
        for f in sorted(n for n in os.listdir(folder) if n.endswith(".yaml")):  # not configs/layton/sdxl/
            name = f"{family}/{f[:-5]}"
            t = load_config(os.path.join(folder, f)).train
            out.append((name, t.optimizer, f"{t.lr:g}", f"({t.betas[0]:g}, {t.betas[1]:g})", f"{t.weight_decay:g}",
                        _groups(t), t.lr_schedule, FOLLOWS.get(name, "toy (CPU) config")))
    return out


def table() -> str:
    head = ["| config | optimiser | lr | betas | weight decay | decayed tensors | schedule | follows |",
            "|---|---|---|---|---|---|---|---|"]
    return "\n".join(head + ["| " + " | ".join(r) + " |" for r in rows()])


if __name__ == "__main__":
    print(table())
