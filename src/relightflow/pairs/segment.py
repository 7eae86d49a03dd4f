"""Subject segmentation backends: ``sam2`` (box-prompted), ``sam3`` (text-prompted), ``classical``
(offline: Haar face detector + GrabCut) and ``none`` (whole frame).

Every backend returns a :class:`Segmentation` (a boolean mask at the image's size, a confidence and the
prompt used); :func:`clean_mask` then keeps the largest component and fills its holes. Real checkpoints
and tiny test models load through the same functions (a local path, or a hub id that is downloaded).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from relightflow.devices import pick_device
from relightflow.faces import detect_face

log = logging.getLogger(__name__)

# Portrait prior used when no face is found: a box and a point, as fractions of (width, height).
DEFAULT_BOX = (0.08, 0.04, 0.92, 1.0)
DEFAULT_POINT = (0.5, 0.4)
MIN_CONTRAST = 2.0  # grey-level std below which an image has nothing to segment


@dataclass
class Segmentation:
    """A segmenter's answer for one image."""

    mask: np.ndarray  # HxW bool
    score: float  # the backend's confidence in [0, 1]
    prompt: str  # what prompted it: "face", "box", "text:person", "frame"


# ---------------------------------------------------------------- shared helpers


def head_and_shoulders(face: tuple[int, int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    """Box ``[x0, y0, x1, y1]`` around a face and the shoulders below it (1.5 face widths each side)."""
    x, y, fw, fh = face
    h, w = shape[:2]
    return np.array([max(0, x - 1.5 * fw), max(0, y - 0.5 * fh), min(w - 1, x + 2.5 * fw), h - 1], np.float32)


def prior_box(shape: tuple[int, ...], box: tuple[float, ...] = DEFAULT_BOX) -> np.ndarray:
    """A box given as fractions of (width, height), in pixels."""
    h, w = shape[:2]
    return np.array([box[0] * (w - 1), box[1] * (h - 1), box[2] * (w - 1), box[3] * (h - 1)], np.float32)


def clean_mask(mask: np.ndarray, min_component: float = 0.1) -> np.ndarray:
    """Drop specks (components smaller than ``min_component`` x the largest) and fill enclosed holes."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return m
    _, labels, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA].copy()
    areas[0] = 0
    keep = np.take(areas >= min_component * areas.max(), labels)
    # holes = background components that do not touch the border
    n_bg, bg_labels = cv2.connectedComponents((~keep).astype(np.uint8), connectivity=4)
    border = np.unique(np.concatenate([bg_labels[0], bg_labels[-1], bg_labels[:, 0], bg_labels[:, -1]]))
    holes = ~keep & ~np.isin(bg_labels, border)
    return keep | holes


def separability(image: np.ndarray, mask: np.ndarray) -> float:
    """1 - histogram intersection of foreground and background colours (8x8x8 bins): 0 = same, 1 = apart."""
    if mask.all() or not mask.any():
        return 0.0
    m8 = mask.astype(np.uint8)
    hists = [cv2.calcHist([image], [0, 1, 2], sel, [8, 8, 8], [0, 256] * 3) for sel in (m8, 1 - m8)]
    hists = [hh / max(float(hh.sum()), 1.0) for hh in hists]
    return float(1.0 - np.minimum(*hists).sum())


def _device(device: str | None) -> str:
    return pick_device(device)


# ---------------------------------------------------------------- backends


class Segmenter:
    """Interface: ``segment(image) -> Segmentation``; ``params()`` feeds the cache key."""

    name = "base"

    def params(self) -> dict[str, Any]:
        return {}

    def segment(self, image: np.ndarray) -> Segmentation:
        raise NotImplementedError


class FrameSegmenter(Segmenter):
    """``none``: the whole frame is the subject."""

    name = "none"

    def segment(self, image: np.ndarray) -> Segmentation:
        return Segmentation(np.ones(image.shape[:2], bool), 1.0, "frame")


class ClassicalSegmenter(Segmenter):
    """Offline: GrabCut at ``work_side`` px, seeded by a head-and-shoulders layout around the largest Haar
    face (or the portrait prior box when none is found). Score = colour separability of the result."""

    name = "classical"

    def __init__(
        self, work_side: int = 256, iterations: int = 3, box: tuple[float, ...] = DEFAULT_BOX
    ) -> None:
        self.work_side, self.iterations, self.box = int(work_side), int(iterations), tuple(box)

    def params(self) -> dict[str, Any]:
        return {"work_side": self.work_side, "iterations": self.iterations, "box": list(self.box), "v": 1}

    def segment(self, image: np.ndarray) -> Segmentation:
        h, w = image.shape[:2]
        if min(h, w) < 16:
            return Segmentation(np.zeros((h, w), bool), 0.0, "too small")
        scale = min(1.0, self.work_side / max(h, w))
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        if float(small.std()) < MIN_CONTRAST:  # GrabCut's colour models degenerate (and crawl) on flat images
            return Segmentation(np.zeros((h, w), bool), 0.0, "uniform image")
        face = detect_face(image)
        sy, sx = small.shape[0] / h, small.shape[1] / w
        seeds = self._seeds(
            small.shape, None if face is None else (face[0] * sx, face[1] * sy, face[2] * sx, face[3] * sy)
        )
        fg = self._grabcut(small, seeds)
        full = cv2.resize(fg.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
        return Segmentation(full, separability(small, fg), "face" if face else "box")

    def _seeds(self, shape: tuple[int, ...], face: tuple[float, ...] | None) -> np.ndarray:
        """GrabCut labels: definite background outside the box, probable background in it, probable
        foreground on the head ellipse and torso, definite foreground on the face core."""
        h, w = shape[:2]
        seeds = np.full((h, w), cv2.GC_BGD, np.uint8)
        if face is None:
            x0, y0, x1, y1 = prior_box(shape, self.box).astype(int)
            fw, fh = 0.3 * w, 0.4 * h
            fx, fy = (w - fw) / 2, 0.38 * h - fh / 2
        else:
            fx, fy, fw, fh = face
            x0, y0, x1, y1 = head_and_shoulders((int(fx), int(fy), int(fw), int(fh)), shape).astype(int)
        seeds[y0 : y1 + 1, x0 : x1 + 1] = cv2.GC_PR_BGD
        cx, cy = int(fx + fw / 2), int(fy + fh / 2)
        cv2.ellipse(seeds, (cx, cy), (int(0.6 * fw), int(0.75 * fh)), 0, 0, 360, int(cv2.GC_PR_FGD), -1)
        tx0, tx1 = int(max(x0, fx - 0.8 * fw)), int(min(x1, fx + 1.8 * fw))
        seeds[int(min(h - 1, fy + 1.4 * fh)) :, tx0 : tx1 + 1] = cv2.GC_PR_FGD
        cv2.ellipse(
            seeds, (cx, cy), (max(1, int(0.25 * fw)), max(1, int(0.3 * fh))), 0, 0, 360, int(cv2.GC_FGD), -1
        )
        return seeds

    def _grabcut(self, small: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        labels = seeds.copy()
        try:
            cv2.grabCut(small, labels, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error as e:  # no background or foreground samples: keep the seeds
            log.warning("GrabCut failed (%s); using the seed layout", e)
        return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)


def resolve_sam2_checkpoint(checkpoint: str, config: str | None) -> tuple[str, str]:
    """``(config, local checkpoint path)`` from a local ``.pt`` path or a hub id such as
    ``facebook/sam2.1-hiera-large`` (downloaded through huggingface_hub, honouring ``HF_HUB_OFFLINE``)."""
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

    if os.path.exists(checkpoint):
        if not config:
            raise ValueError("pairs.sam2.config is required with a local checkpoint")
        return config, checkpoint
    if checkpoint not in HF_MODEL_ID_TO_FILENAMES:
        raise FileNotFoundError(
            f"SAM2 checkpoint {checkpoint!r} is neither a file nor a known hub id ({sorted(HF_MODEL_ID_TO_FILENAMES)})"
        )
    from huggingface_hub import hf_hub_download

    hub_config, filename = HF_MODEL_ID_TO_FILENAMES[checkpoint]
    return config or hub_config, hf_hub_download(repo_id=checkpoint, filename=filename)


def load_sam2(config: str | None, checkpoint: str, device: str | None = None, image_size: int | None = None):
    """A ``SAM2ImagePredictor`` for a bundled model config (e.g. ``configs/sam2.1/sam2.1_hiera_l.yaml``)
    and a checkpoint; ``image_size`` overrides the model's input size (multiple of 32; tests use 256-512)."""
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    config, ckpt = resolve_sam2_checkpoint(checkpoint, config)
    overrides = [f"++model.image_size={int(image_size)}"] if image_size else []
    model = build_sam2(config, ckpt, device=_device(device), hydra_overrides_extra=overrides)
    predictor = SAM2ImagePredictor(model)
    if image_size:  # the predictor hard-codes backbone feature sizes for 1024 px
        s = int(image_size)
        predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    return predictor


class Sam2Segmenter(Segmenter):
    """SAM2 image predictor prompted by a head-and-shoulders box around the largest Haar face plus a point
    on the face, or by the configured ``box``/``point`` (fractions) when no face is found; of the three
    multimask outputs the one with the best predicted IoU is kept."""

    name = "sam2"

    def __init__(
        self,
        config: str | None,
        checkpoint: str,
        device: str | None = None,
        image_size: int | None = None,
        box: tuple[float, ...] = DEFAULT_BOX,
        point: tuple[float, ...] | None = DEFAULT_POINT,
        use_face: bool = True,
    ) -> None:
        self.config, self.checkpoint, self.image_size = config, checkpoint, image_size
        self.box, self.point, self.use_face = tuple(box), (tuple(point) if point else None), use_face
        self.predictor = load_sam2(config, checkpoint, device, image_size)

    def params(self) -> dict[str, Any]:
        return {"config": self.config, "checkpoint": self.checkpoint, "image_size": self.image_size,
                "box": list(self.box), "point": self.point and list(self.point), "use_face": self.use_face}  # fmt: skip

    def prompt(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, str]:
        """``(box, point or None, prompt name)`` for one image."""
        h, w = image.shape[:2]
        face = detect_face(image) if self.use_face else None
        if face is not None:
            x, y, fw, fh = face
            return (
                head_and_shoulders(face, image.shape),
                np.array([[x + fw / 2, y + fh / 2]], np.float32),
                "face",
            )
        point = (
            np.array([[self.point[0] * (w - 1), self.point[1] * (h - 1)]], np.float32) if self.point else None
        )
        return prior_box(image.shape, self.box), point, "box"

    def segment(self, image: np.ndarray) -> Segmentation:
        import torch

        box, point, name = self.prompt(image)
        on_gpu = self.predictor.device.type == "cuda"
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            self.predictor.set_image(image)
            masks, scores, _ = self.predictor.predict(
                point_coords=point,
                point_labels=None if point is None else np.ones(len(point), np.int32),
                box=box,
                multimask_output=True,
            )
        best = int(np.argmax(scores))
        return Segmentation(np.asarray(masks[best]) > 0.5, float(np.clip(scores[best], 0, 1)), name)


def load_sam3(model: str, device: str | None = None):
    """``(processor, model)`` of transformers' SAM3 from a local folder or hub id."""
    from transformers import Sam3Model, Sam3Processor

    dev = _device(device)
    processor = Sam3Processor.from_pretrained(model)
    net = Sam3Model.from_pretrained(model).to(dev).eval()
    return processor, net


class Sam3Segmenter(Segmenter):
    """Text-prompted SAM3 (transformers ``Sam3Model``): the instance with the best score above
    ``threshold`` is kept."""

    name = "sam3"

    def __init__(
        self,
        model: str,
        text_prompt: str = "person",
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        device: str | None = None,
    ) -> None:
        self.model_id, self.text_prompt = model, text_prompt
        self.threshold, self.mask_threshold = float(threshold), float(mask_threshold)
        self.processor, self.model = load_sam3(model, device)

    def params(self) -> dict[str, Any]:
        return {"model": self.model_id, "text_prompt": self.text_prompt, "threshold": self.threshold,
                "mask_threshold": self.mask_threshold}  # fmt: skip

    def segment(self, image: np.ndarray) -> Segmentation:
        import torch
        from PIL import Image

        h, w = image.shape[:2]
        inputs = self.processor(images=Image.fromarray(image), text=self.text_prompt, return_tensors="pt")
        inputs = inputs.to(self.model.device)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        result = self.processor.post_process_instance_segmentation(
            outputs, threshold=self.threshold, mask_threshold=self.mask_threshold, target_sizes=[(h, w)]
        )[0]
        prompt = f"text:{self.text_prompt}"
        if len(result["scores"]) == 0:
            return Segmentation(np.zeros((h, w), bool), 0.0, prompt)
        best = int(torch.argmax(result["scores"]))
        mask = result["masks"][best].cpu().numpy().astype(bool)
        return Segmentation(mask, float(result["scores"][best]), prompt)


SEGMENTERS = ("sam2", "sam3", "classical", "none")


def build_segmenter(cfg: dict[str, Any], device: str | None = None) -> Segmenter:
    """The segmenter named by ``cfg["segmenter"]`` (the ``pairs`` config section)."""
    name = cfg["segmenter"]
    if name not in SEGMENTERS:
        raise ValueError(f"unknown pairs.segmenter {name!r} (one of {SEGMENTERS})")
    if name == "none":
        return FrameSegmenter()
    sub = cfg[name]
    if name == "classical":
        return ClassicalSegmenter(**sub)
    if name == "sam2":
        return Sam2Segmenter(
            sub["config"], sub["checkpoint"], device, sub["image_size"], tuple(sub["box"]), sub["point"],
            bool(sub["use_face"]),
        )  # fmt: skip
    if name == "sam3":
        return Sam3Segmenter(sub["model"], sub["text_prompt"], sub["threshold"], sub["mask_threshold"], device)
    raise ValueError(f"unknown pairs.segmenter {name!r} (sam2 | sam3 | classical | none)")
