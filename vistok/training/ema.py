"""EMA of the weights (diffusers ``EMAModel``), saved and loaded through accelerate's state hooks as
``ema.safetensors`` + ``ema.json`` inside each checkpoint (no pickle). EMA covers parameters; buffers
(e.g. an EMA-learnt VQ codebook) are taken from the live model when a release is written. Only trainable
parameters are tracked: a frozen pretrained part (a CLIP teacher, a T5 encoder) never changes."""
from __future__ import annotations

import json
import os

import torch
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

from vistok.checkpoints import EMA_META, EMA_WEIGHTS


def tracked(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters EMA follows: the trainable ones, in a fixed order."""
    return [p for p in model.parameters() if p.requires_grad]


def attach_ema(accelerator, model: torch.nn.Module, decay: float) -> EMAModel:
    ema = EMAModel(tracked(model), decay=decay, foreach=True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            tensors = {n: p.detach().contiguous().cpu() for n, p in zip(names, ema.shadow_params)}
            save_file(tensors, os.path.join(output_dir, EMA_WEIGHTS))
            with open(os.path.join(output_dir, EMA_META), "w") as f:
                json.dump({"decay": ema.decay, "optimization_step": ema.optimization_step}, f)

    def load_hook(models, input_dir):
        path = os.path.join(input_dir, EMA_WEIGHTS)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint '{input_dir}' has no {EMA_WEIGHTS}, but train.ema_decay > 0")
        tensors = load_file(path)
        for n, p in zip(names, ema.shadow_params):
            p.data.copy_(tensors[n].to(p.device))
        with open(os.path.join(input_dir, EMA_META)) as f:
            ema.optimization_step = json.load(f)["optimization_step"]

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
    return ema


