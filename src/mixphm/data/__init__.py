"""Datasets, the low-resource sampler, and visual input."""

from mixphm.data.examples import DataError, ImageFiles, RegionFeatures, VQADataset, VQAExample
from mixphm.data.features import RegionFeatureFile, RegionFeatureFiles
from mixphm.data.loaders import load_easy_vqa, load_gqa, load_vlt5_vqa, load_vqa
from mixphm.data.sampling import (
    K_VALUES,
    SEEDS,
    LowResourceSplit,
    read_manifest,
    sample_low_resource,
    write_manifest,
)

__all__ = [
    "K_VALUES",
    "SEEDS",
    "DataError",
    "ImageFiles",
    "LowResourceSplit",
    "RegionFeatureFile",
    "RegionFeatureFiles",
    "RegionFeatures",
    "VQADataset",
    "VQAExample",
    "load_easy_vqa",
    "load_gqa",
    "load_vlt5_vqa",
    "load_vqa",
    "read_manifest",
    "sample_low_resource",
    "write_manifest",
]
