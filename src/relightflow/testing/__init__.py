"""Everything tests, benchmarks and the demo build instead of downloading: rendered scenes with known
lighting (:mod:`.scenes`) and tiny random models saved in the real checkpoints' formats, so they load
through the product's own loaders (:mod:`.tiny_sd`, :mod:`.tiny_flux`, :mod:`.tiny_vlm`, :mod:`.tiny_sam`,
:mod:`.tiny_clip`). No product module imports from here."""

from relightflow.testing.scenes import LIGHT_COLORS, Scene, render_scene, scene_grid

__all__ = ["LIGHT_COLORS", "Scene", "render_scene", "scene_grid"]
