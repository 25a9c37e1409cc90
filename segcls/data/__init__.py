"""Dataset folder format, tile extraction, the paper's settings, tile cache and augmentation."""
