"""One exception family. Messages are one line that says what was expected and what was found.

Every `SegclsError` is a user-facing problem (bad input, missing library): the CLIs print it as
`Error: ...` and exit with `exit_code`, never with a traceback.
"""


class SegclsError(Exception):
    exit_code = 2


class DatasetError(SegclsError):
    """A dataset folder (or a raw challenge download) is malformed."""


class CheckpointError(SegclsError):
    """A training checkpoint or pretrained weight file cannot be used."""


class ModelError(SegclsError):
    """An exported model (ONNX, engine) is missing, corrupt or does not fit the request."""


class SlideError(SegclsError):
    """A slide cannot be opened or read at the requested resolution."""


class DamagedTileError(SlideError):
    """A stored tile of a slide cannot be decoded without loss: its data is corrupt or cut short.

    `path` is the slide, `level` the pyramid level that holds the tile, `box` the tile's extent as
    (x, y, width, height) in level-0 pixels (covering every level-0 location whose level pixel lies in the
    tile, clipped to the slide), `level_box` the same in `level`'s own pixels, `reason` what the decoder
    said. A reader raises it for a region that touches the tile; the rest of the slide still reads.
    """

    def __init__(
        self,
        path: str,
        level: int,
        box: tuple[int, int, int, int],
        reason: str,
        level_box: tuple[int, int, int, int] | None = None,
    ) -> None:
        self.path, self.level, self.reason = str(path), int(level), reason
        self.box = tuple(int(v) for v in box)
        self.level_box = self.box if level_box is None else tuple(int(v) for v in level_box)
        x, y, w, h = self.box
        super().__init__(
            f"damaged tile in {self.path}: level {self.level} tile at x={x}, y={y} ({w} x {h} px, level-0 "
            f"pixels): {reason}"
        )

    def __reduce__(self):  # pickled whole (Ray, process pools), not rebuilt from the message alone
        return type(self), (self.path, self.level, self.box, self.reason, self.level_box)


class ExportError(SegclsError):
    """Export failed, including a failed numerical verification."""

    exit_code = 1


class BackendUnavailableError(SegclsError):
    """An inference backend's library or device is not available here."""
