"""Everything tests, benchmarks and the demo build instead of downloading: rendered scenes with known
lighting (:mod:`.scenes`, portraits :mod:`.faces`, still lifes :mod:`.objects`, a camera model for exposure
brackets :mod:`.camera`) and tiny random models saved in the real checkpoints' formats, so they load
through the product's own loaders (:mod:`.tiny_sd`, :mod:`.tiny_flux`, :mod:`.tiny_vlm`, :mod:`.tiny_sam`,
:mod:`.tiny_clip`). No product module imports from here."""

from relightflow.testing.faces import FaceScene, Layers, face_layers, face_set, render_face
from relightflow.testing.objects import ObjectScene, object_layers, render_objects
from relightflow.testing.scenes import LIGHT_COLORS, Scene, render_scene, scene_grid, scene_layers

__all__ = [
    "LIGHT_COLORS", "FaceScene", "Layers", "ObjectScene", "Scene", "face_layers", "face_set", "object_layers",
    "render_face", "render_objects", "render_scene", "scene_grid", "scene_layers",
]  # fmt: skip
