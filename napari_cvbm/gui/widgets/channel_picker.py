"""Picking an image: one layer (grey or RGB) or, for a model of several channels, one layer per channel.

Both widgets use it (Segment with the active model's channels, each Fine-tune row with the channels
of the model it fine-tunes). For a model of N > 1 channels the image picker is its first channel and
N - 1 more pickers follow, labelled with the channels' names; when the image is named
"<case> <first channel>" (as the reader names the layers of a multi-channel file) they are preset to
the layers "<case> <channel>". An RGB image is used as it is: the engine checks that the model
takes red, green and blue. ``gui.snapshots.image_input`` reads the layers chosen.
"""

from typing import List, Optional, Sequence, Tuple

from magicgui.widgets import ComboBox, Container
from napari.layers import Image
from qtpy.QtWidgets import QComboBox

from ..snapshots import ImageInput, image_input, source_images


def model_channels(config) -> Tuple[str, ...]:
    """The channel names of a model of ``config`` (None: no model): () for one channel, "0", "1"... unnamed."""
    if config is None or config.in_channels == 1:
        return ()
    return tuple(config.channel_names or (str(i) for i in range(config.in_channels)))


def layer_choices(layers):
    """magicgui choices for a layer picker: (name, layer) of the layers ``layers()`` returns."""
    return lambda _widget: [(layer.name, layer) for layer in layers()]


def compact(combo: ComboBox) -> ComboBox:
    """``combo`` no wider than about eight characters needs (long layer names are cut)."""
    combo.native.setMinimumContentsLength(8)
    combo.native.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    return combo


def refresh_choices(combo: ComboBox) -> None:
    """Offer the current layers; the chosen one stays chosen (by identity, so renames are fine)."""
    chosen = combo.value
    with combo.changed.blocked():
        combo.reset_choices()  # drops a renamed layer's old entry, and with it the choice
        if any(layer is chosen for layer in combo.choices if layer is not None):
            combo.value = chosen
    if combo.value is not chosen:
        combo.changed.emit(combo.value)


def case_channels(image: Image, names: Sequence[str], layers: Sequence[Image]) -> List[Optional[Image]]:
    """The layers of the channels ``names`` of ``image``'s case, ``image`` first: "<case> <name>" among
    ``layers`` when ``image`` is named "<case> <names[0]>", else None."""
    if not image.name.endswith(" " + names[0]):
        return [image] + [None] * (len(names) - 1)
    by_name = {layer.name: layer for layer in layers}
    case = image.name[:-len(names[0])]
    return [image] + [by_name.get(case + name) for name in names[1:]]


def channel_layers(image: Image, names: Sequence[str], layers: Sequence[Image]) -> List[Optional[Image]]:
    """The layers an image is read from for a model of channels ``names``: ``image`` alone when it is
    RGB or the model takes one channel, else :func:`case_channels`."""
    return [image] if image.rgb or len(names) < 2 else case_channels(image, names, layers)


def single_channel_images(viewer) -> List[Image]:
    return [layer for layer in source_images(viewer) if not layer.rgb]


class ChannelPicker(Container):
    """The image picker (``image``) and, for a model of several channels, one picker per further channel."""

    def __init__(self, viewer, label: str = "Image", nullable: bool = False):
        self.viewer, self._image_label = viewer, label
        self.image = compact(ComboBox(label=label, choices=layer_choices(lambda: source_images(viewer)),
                                      nullable=nullable, tooltip="image layer (grey or RGB)"))
        super().__init__(widgets=[self.image], labels=True)
        self.margins = (0, 0, 0, 0)
        self.names: Tuple[str, ...] = ()
        self.extra: List[ComboBox] = []
        self.image.changed.connect(self._image_chosen)

    def set_channels(self, names: Sequence[str]) -> None:
        """Pick the layers of a model of channels ``names`` (() for one channel)."""
        names = tuple(names)
        if names == self.names:
            return
        for combo in self.extra:
            self.remove(combo)
        self.names = names
        self.extra = [compact(ComboBox(label=name, choices=layer_choices(lambda: single_channel_images(self.viewer)),
                                       nullable=True, tooltip=f"the layer of channel '{name}'")) for name in names[1:]]
        self.extend(self.extra)
        self._image_chosen()

    @property
    def by_channel(self) -> bool:
        """Whether the image is read from one layer per channel (a model of several, a grey image)."""
        image = self.image.value
        return len(self.names) > 1 and not (image is not None and image.rgb)

    def _image_chosen(self, *_) -> None:
        several = self.by_channel
        label = self._image_label
        self.image.label = (f"{label} ({self.names[0]})" if label else self.names[0]) if several else label
        for combo in self.extra:
            combo.visible = several
        self._preset(every=True)

    def _preset(self, every: bool) -> None:
        """Preset the channel pickers (``every``, else the empty ones) to the image's channel layers found by name."""
        image = self.image.value
        if not self.by_channel or image is None:
            return
        for combo, layer in zip(self.extra, case_channels(image, self.names, source_images(self.viewer))[1:]):
            if layer is not None and (every or combo.value is None) and any(c is layer for c in combo.choices):
                combo.value = layer

    def refresh(self) -> None:
        """Offer the current layers in every picker; the chosen ones stay chosen, empty channels are preset."""
        for combo in [*self.extra, self.image]:
            refresh_choices(combo)
        self._preset(every=False)

    def layers(self) -> list:
        """The layers chosen: the image, then those of its further channels (None where not chosen)."""
        return [self.image.value, *(combo.value for combo in self.extra)] if self.by_channel else [self.image.value]

    def read(self, stand_in: bool = False) -> ImageInput:
        """The chosen image as the engine reads it (``snapshots.image_input``); the image must be chosen."""
        return image_input(self.layers(), self.names, stand_in)
