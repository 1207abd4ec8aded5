"""The CVBM engine: networks, losses, training, inference, metrics and I/O.

Headless by design: nothing here imports Qt or napari, so it runs in scripts, the CLI and
``torchrun`` workers. Each module maps to a section of the method spec (docs cite them).
"""
