"""Inference backends: one file each, one interface (base.py)."""
