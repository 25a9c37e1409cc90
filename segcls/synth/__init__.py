"""Synthetic histology: a class appearance model, datasets in the folder format, and pyramidal slides."""

from segcls.synth.appearance import BACKGROUND, CLASSES, COLORS, label_region, render_region
from segcls.synth.dataset import make_dataset
from segcls.synth.slide import make_slide

__all__ = ["BACKGROUND", "CLASSES", "COLORS", "label_region", "make_dataset", "make_slide", "render_region"]
