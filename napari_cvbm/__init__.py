"""napari-cvbm: CVBM semi-supervised segmentation for napari, with a headless engine and CLI."""

__version__ = "0.1.0"
