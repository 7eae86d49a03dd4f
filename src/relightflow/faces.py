"""Frontal face detection with OpenCV's bundled Haar cascade (no weights to download): the classical
segmenter's portrait prior and the light-direction measure's face fit both use it."""

from __future__ import annotations

import os
from functools import cache

import cv2
import numpy as np


@cache
def _face_cascade() -> cv2.CascadeClassifier:
    path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"cannot load the Haar face cascade {path} (needs opencv-python-headless<5)")
    return cascade


def detect_face(image: np.ndarray, work_side: int = 512) -> tuple[int, int, int, int] | None:
    """The largest frontal face as ``(x, y, w, h)`` in image pixels (OpenCV Haar cascade), or None."""
    h, w = image.shape[:2]
    scale = min(1.0, work_side / max(h, w))
    small = cv2.resize(
        image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
    )
    gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
    min_side = max(12, min(gray.shape) // 12)
    faces = _face_cascade().detectMultiScale(
        gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side)
    )
    if len(faces) == 0:
        return None
    x, y, fw, fh = max(faces, key=lambda f: f[2] * f[3])
    return tuple(int(round(v / scale)) for v in (x, y, fw, fh))  # type: ignore[return-value]
