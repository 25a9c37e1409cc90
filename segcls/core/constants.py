"""Values every layer agrees on, defined once."""

from __future__ import annotations

from segcls.core.errors import SegclsError

# Class index of pixels that are unlabelled, not tissue or not analysed: in dataset masks, label maps and
# the runtime's masks alike (its palette entry is white); metrics ignore it.
UNLABELLED = 255
# Output stride of the network's low-resolution logits (PAPER.md: 1/8 of the input).
NETWORK_STRIDE = 8
# Input sizes must be multiples of the encoder's stride (layer3 is at 1/16); TIFF tiles too.
INPUT_MULTIPLE = 16

# Files `segcls-infer`, `segcls-prepare` and `segcls-view` take as slides (what OpenSlide, tifffile or PIL open).
SLIDE_SUFFIXES = (
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm",
    ".png", ".jpg", ".jpeg",
)  # fmt: skip
# Images of a dataset folder (images/, masks/, labeled/).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def check_multiple(name: str, value: int, minimum: int = INPUT_MULTIPLE) -> int:
    """`value` if it is a multiple of 16 and at least `minimum`, else a SegclsError naming `name`."""
    if value < minimum or value % INPUT_MULTIPLE:
        raise SegclsError(f"{name} must be a multiple of {INPUT_MULTIPLE} and >= {minimum}, got {value}")
    return value
