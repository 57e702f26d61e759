"""Datasets for AdaGen: export a source (embedded MNIST, an image folder or an .npz) to a fixed split.

`export_dataset` turns the `data` parameters into one deterministic .npz file; `load_dataset` reads
it back as an `ImageDataset`. Every problem with the inputs raises `DatasetError`.
"""

from adagen.data.dataset import DatasetError, ImageDataset, load_dataset
from adagen.data.export import export_dataset

__all__ = ["DatasetError", "ImageDataset", "export_dataset", "load_dataset"]
