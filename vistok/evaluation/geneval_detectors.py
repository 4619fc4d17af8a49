"""Plugging a real detector into GenEval scoring.

``DetectorAdapter`` wraps any detector callable and colour classifier:

    detect_fn(image HxWx3 uint8) -> iterable of (class_index, (x0, y0, x1, y1), score, mask HxW bool | None)
    color_fn(list of crops HxWx3 uint8, classname) -> list of colour names

GenEval's own setup is Mask2Former (Swin-S, mmdetection 2.x, COCO classes) and CLIP ViT-L/14 zero-shot
over its 10 colours on crops whose background (outside the instance mask) is filled with grey #999:

    from mmdet.apis import inference_detector, init_detector
    model = init_detector("mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py", "/local/path/weights.pth")
    def detect_fn(image):
        boxes, masks = inference_detector(model, image[..., ::-1])   # mmdet wants BGR
        for k, (bs, ms) in enumerate(zip(boxes, masks)):
            for b, m in zip(bs, ms):
                yield k, tuple(b[:4]), float(b[4]), m
    detector = DetectorAdapter(detect_fn, COCO_CLASSES, color_fn=my_clip_colour_classifier)

Scores, thresholds and the one-per-rank colour/position checks are applied by ``geneval.evaluate_image``.
"""
from __future__ import annotations

import numpy as np

from vistok.evaluation.geneval import Detection

GENEVAL_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
CROP_BACKGROUND = (153, 153, 153)  # #999


def masked_crop(image: np.ndarray, det: Detection) -> np.ndarray:
    """The detection's box, with pixels outside its mask (when it has one) set to grey #999."""
    x0, y0, x1, y1 = (int(round(v)) for v in det.box)
    img = np.array(image, copy=True)
    mask = det.extra.get("mask")
    if mask is not None:
        img[~np.asarray(mask, bool)] = CROP_BACKGROUND
    return img[max(0, y0):max(y0 + 1, y1), max(0, x0):max(x0 + 1, x1)]


class DetectorAdapter:
    def __init__(self, detect_fn, class_names, color_fn=None):
        self.detect_fn, self.class_names, self.color_fn = detect_fn, list(class_names), color_fn

    def detect(self, image: np.ndarray) -> dict:
        out: dict[str, list[Detection]] = {}
        for k, box, score, mask in self.detect_fn(image):
            name = self.class_names[int(k)]
            out.setdefault(name, []).append(Detection(tuple(float(v) for v in box), float(score), extra={"mask": mask}))
        return out

    def colors(self, image, detections, classname) -> list:
        if self.color_fn is None:
            raise ValueError("this GenEval detector has no colour classifier (color_fn); colour prompts cannot be scored")
        return list(self.color_fn([masked_crop(image, d) for d in detections], classname))
