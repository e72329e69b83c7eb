"""Data: RecordIO, image-folder and verification readers, augmentation, the synthetic dataset, builders."""
from facetrain.data.augment import Augment, build_augment
from facetrain.data.builders import DATASETS, TrainData, build_train_data, resolve_targets
from facetrain.data.datasets import FaceDataset, RecordDataset
from facetrain.data.imagefolder import ImageFolderDataset
from facetrain.data.verification_bin import load_verification_bin

__all__ = [
    "DATASETS", "Augment", "FaceDataset", "ImageFolderDataset", "RecordDataset", "TrainData", "build_augment",
    "build_train_data", "load_verification_bin", "resolve_targets",
]
