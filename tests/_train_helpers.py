"""A dataset a short CPU training run can learn: three classes told apart by colour."""

import numpy as np
from _data_helpers import write_dataset

COLOURS = np.array([[200, 80, 80], [80, 200, 80], [80, 80, 200]], np.uint8)


def colour_dataset(root, n_images=8, size=128, seed=0):
    """3 classes told apart by colour, in blocks and stripes, so a short CPU run can learn them."""
    rng = np.random.default_rng(seed)
    pairs = {}
    for i in range(n_images):
        mask = np.zeros((size, size), np.uint8)
        for by in range(0, size, 32):
            for bx in range(0, size, 32):
                a, b = rng.choice(3, 2, replace=False)
                block = mask[by : by + 32, bx : bx + 32]
                block[:] = a
                if rng.random() < 0.5:  # a two-class tile
                    block[:, rng.integers(8, 24) :] = b
        image = COLOURS[mask].astype(np.int16) + rng.integers(-30, 30, (size, size, 3))
        pairs[f"img{i}"] = (np.clip(image, 0, 255).astype(np.uint8), mask)
    names = sorted(pairs)
    split = {"train": names[:4], "val": names[4:6], "test": names[6:]}
    return write_dataset(root, pairs, classes=("red", "green", "blue"), split=split, mpp=2.0)
