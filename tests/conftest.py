"""Fixture datasets: the hand-written JSON files in tests/fixtures plus the binary files
(images, a region feature file in the real *_obj36.h5 layout) written per test."""

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"


def write_image(path: Path, color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), color).save(path)
    return path


def write_obj36(path: Path, image_ids, numeric_keys=False, regions=36, dim=2048) -> Path:
    """One group per image: features (N, D), boxes (N, 4) in pixels, img_h, img_w."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for image_id in image_ids:
            key = str(int(image_id.rsplit("_", 1)[-1])) if numeric_keys else image_id
            group = f.create_group(key)
            group["features"] = rng.standard_normal((regions, dim)).astype(np.float32)
            boxes = np.tile(np.array([[10.0, 20.0, 320.0, 240.0]], np.float32), (regions, 1))
            group["boxes"] = boxes
            group["img_h"] = 480
            group["img_w"] = 640
    return path


@pytest.fixture
def fixture_dir(tmp_path) -> Path:
    """A copy of tests/fixtures with COCO and GQA images added."""
    root = tmp_path / "data"
    shutil.copytree(FIXTURES, root)
    for number in (42, 73):
        write_image(root / "vqa_v2" / "images" / f"COCO_val2014_{number:012d}.jpg")
    for image_id in ("n161313", "n235859"):
        write_image(root / "gqa" / "images" / f"{image_id}.jpg")
    write_image(root / "okvqa" / "images" / "COCO_val2014_000000297147.jpg")
    return root
