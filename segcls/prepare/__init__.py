"""Importers from the challenges' raw download layouts into the dataset folder format."""
