"""Data: RecordIO and verification readers, the synthetic dataset, and dataset builders."""
from facetrain.data.builders import DATASETS, TrainData, build_train_data, resolve_targets
from facetrain.data.datasets import RecordDataset
from facetrain.data.verification_bin import load_verification_bin

__all__ = ["DATASETS", "RecordDataset", "TrainData", "build_train_data", "load_verification_bin", "resolve_targets"]
