"""napari widgets: they only wire the headless engine (``napari_cvbm.core``) to the viewer."""
