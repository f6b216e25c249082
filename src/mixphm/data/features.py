"""Region features in the LXMERT / VL-T5 ``*_obj36.h5`` layout.

One HDF5 group per image id holding ``features`` (36, 2048) float32, ``boxes`` (36, 4) as
pixel x1, y1, x2, y2, and the image size as ``img_h`` and ``img_w`` (or one ``img_hw``).
Some copies key COCO images by the numeric id alone ("393225" for
"COCO_val2014_000000393225"); both keys are tried.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mixphm.data.examples import DataError, RegionFeatures


def _candidate_keys(image_id: str) -> list[str]:
    suffix = image_id.rsplit("_", 1)[-1]
    return [image_id, str(int(suffix))] if suffix.isdigit() else [image_id]


class RegionFeatureFile:
    """Reads one image's regions on demand; the file opens lazily (once per process)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: feature file not found")
        self._file: Any = None
        self._keys: set[str] | None = None

    def _open(self) -> Any:
        if self._file is None:
            import h5py

            try:
                self._file = h5py.File(self.path, "r")
            except OSError as error:
                raise DataError(f"{self.path}: not a readable HDF5 file ({error})") from None
        return self._file

    def _key(self, image_id: str) -> str | None:
        if self._keys is None:
            self._keys = set(self._open().keys())
        return next((k for k in _candidate_keys(image_id) if k in self._keys), None)

    def __contains__(self, image_id: str) -> bool:
        return self._key(image_id) is not None

    def load(self, image_id: str) -> RegionFeatures:
        key = self._key(image_id)
        if key is None:
            raise DataError(f"{self.path}: no features for image {image_id!r}")
        group = self._open()[key]
        try:
            features = np.asarray(group["features"], dtype=np.float32)
            boxes = np.asarray(group["boxes"], dtype=np.float32)
            if "img_hw" in group:
                height, width = (float(v) for v in np.asarray(group["img_hw"])[:2])
            else:
                height, width = float(group["img_h"][()]), float(group["img_w"][()])
        except KeyError as error:
            raise DataError(f"{self.path}: image {key!r} lacks {error}") from None
        if features.ndim != 2 or boxes.shape != (features.shape[0], 4):
            raise DataError(
                f"{self.path}: image {key!r} has features {features.shape} and boxes "
                f"{boxes.shape}; expected (N, D) and (N, 4)"
            )
        scale = np.array([width, height, width, height], dtype=np.float32)
        return RegionFeatures(features, np.clip(boxes / scale, 0.0, 1.0))


class RegionFeatureFiles:
    """Several feature files read as one (VQA v2 spans ``train2014_obj36.h5`` and
    ``val2014_obj36.h5``): an image's regions come from the first file that has it."""

    def __init__(self, paths: Sequence[str | Path]) -> None:
        if not paths:
            raise DataError("no feature file given")
        self.files = [RegionFeatureFile(p) for p in paths]

    def __contains__(self, image_id: str) -> bool:
        return any(image_id in f for f in self.files)

    def load(self, image_id: str) -> RegionFeatures:
        for file in self.files:
            if image_id in file:
                return file.load(image_id)
        names = ", ".join(str(f.path) for f in self.files)
        raise DataError(f"no features for image {image_id!r} in {names}")
