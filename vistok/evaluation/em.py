"""The EM segmentation task: a segmentation run's held-out volumes -> VOI / ARAND (the segmentation and the
scores are in ``vistok.metrics.segmentation``)."""
from __future__ import annotations

import torch

from vistok.evaluation.task import Task
from vistok.registry import register_task


@register_task("em")
class EMTask(Task):
    help = "EM segmentation: VOI (bits) / ARAND of a segmentation run on its held-out volumes (watershed + z linking)"

    @classmethod
    def add_arguments(cls, p) -> None:
        p.add_argument("--model", required=True, help="a training run of a segmentation model (e.g. tokenunify_seg)")
        p.add_argument("--max-volumes", type=int, default=0, help="0: every held-out volume")

    @classmethod
    def run(cls, args) -> dict:
        from vistok.data.base import build_dataset
        from vistok.loading import model_from_run

        model, cfg, info = model_from_run(args.model)
        if getattr(model, "kind", None) != "em":
            raise ValueError(f"--model {args.model}: a '{model.model_type}' model is not an EM segmentation model")
        data = build_dataset(cfg.data, "test")
        n = min(len(data), args.max_volumes) if args.max_volumes else len(data)
        batches = ({k: v.unsqueeze(0) if torch.is_tensor(v) else v for k, v in data[i].items()} for i in range(n))
        with torch.no_grad():
            result = model.evaluate(batches)
        return {**result, "checkpoint": info["checkpoint"], "protocol": "VOI in bits (gt 0 ignored), ARAND; section-wise "
                "seeded watershed on the in-plane affinities, sections linked by the z-affinity"}

