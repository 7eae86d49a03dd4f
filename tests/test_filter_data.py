"""The scoring data path: reduced decoding, modes and orientation, perceptual hash, batched workers."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from relightflow import images
from relightflow.filter import data as fdata
from relightflow.images import ImageError, save_image
from relightflow.manifest import write_table

torch.set_num_threads(1)


def _big(size=(1024, 768)) -> np.ndarray:
    return np.asarray(Image.fromarray(data.astronaut()).resize(size, Image.Resampling.BILINEAR))


def test_jpeg_decoded_in_the_dct_domain(tmp_path):
    """The smallest DCT scale keeping both sides >= the requested side: 1/4 for 1024², 1/2 for 1024x768."""
    save_image(tmp_path / "sq.jpg", _big((1024, 1024)))
    assert images.decode(tmp_path / "sq.jpg", 224).size == (256, 256)
    save_image(tmp_path / "wide.jpg", _big())
    assert images.decode(tmp_path / "wide.jpg", 224).size == (512, 384)
    save_image(tmp_path / "a.png", _big())
    assert images.load_reduced(tmp_path / "a.png", 224).shape == (256, 342, 3)  # PNG: decode, box-reduce 1/3


def test_exif_orientation_applied(tmp_path):
    img = Image.fromarray(_big((400, 200)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert images.load_reduced(tmp_path / "rot.jpg", 64).shape[:2] == (200, 100)  # portrait, draft 1/2


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_every_mode_becomes_rgb8(tmp_path, mode):
    src = Image.fromarray(data.chelsea())
    img = src.convert("I;16") if mode == "I;16" else src.convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    img.save(path)
    arr = images.load_reduced(path, 64)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3


def test_corrupt_and_non_images_raise_image_error(tmp_path):
    (tmp_path / "text.jpg").write_text("not an image")
    save_image(tmp_path / "ok.png", data.chelsea())
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:5000])
    for name in ("text.jpg", "cut.png", "absent.jpg"):
        with pytest.raises(ImageError):
            images.load_reduced(tmp_path / name, 64)


def test_resize_center_crop_geometry():
    arr = np.zeros((300, 500, 3), np.uint8)
    arr[:, 250:] = 255
    out = fdata.resize_center_crop(arr, 100)
    assert out.shape == (100, 100, 3) and out.flags.c_contiguous
    assert out[:, :45].max() == 0 and out[:, 55:].min() == 255  # the centre of the wide image


def test_phash_matches_imagehash_and_is_robust():
    imagehash = pytest.importorskip("imagehash")
    for name in ("astronaut", "chelsea", "coffee"):
        img = getattr(data, name)()
        assert fdata.phash(img) == str(imagehash.phash(Image.fromarray(img)))
    cat = data.chelsea()
    small = np.asarray(Image.fromarray(cat).resize((225, 150)))
    dist = bin(int(fdata.phash(cat), 16) ^ int(fdata.phash(small), 16)).count("1")
    assert dist <= 4
    assert bin(int(fdata.phash(cat), 16) ^ int(fdata.phash(data.astronaut()), 16)).count("1") > 16


def test_batches_keep_ids_with_pixels_across_workers(tmp_path):
    rows = []
    for i in range(11):
        path = tmp_path / f"{i}.jpg"
        save_image(path, np.full((40, 60, 3), 20 * i, np.uint8))
        rows.append({"image_id": f"id{i}", "path": str(path), "width": 60, "height": 40})
    rows[4]["path"] = str(tmp_path / "missing.jpg")
    write_table(tmp_path / "m.parquet", rows)
    prepare = functools.partial(fdata.resize_center_crop, size=32)
    seen = {}
    for batch in fdata.iter_prepared(
        tmp_path / "m.parquet", prepare, 32, (32, 32, 3), batch_size=3, num_workers=2
    ):
        assert batch.data.shape[0] == batch.ok.sum() and isinstance(batch.data, torch.Tensor)
        ids = [batch.rows["image_id"][i] for i in np.flatnonzero(batch.ok)]
        for image_id, pixels in zip(ids, batch.data, strict=True):
            seen[image_id] = float(pixels.float().mean())
        assert [batch.errors[i] for i in np.flatnonzero(~batch.ok)] in ([], ["missing file"])
    assert sorted(seen) == sorted(r["image_id"] for r in rows if r["image_id"] != "id4")
    for image_id, mean in seen.items():
        assert mean == pytest.approx(20 * int(image_id[2:]), abs=2)  # each id carries its own pixels
