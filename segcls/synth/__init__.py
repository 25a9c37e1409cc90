"""Synthetic histology: a class appearance model, datasets in the folder format, and pyramidal slides."""
