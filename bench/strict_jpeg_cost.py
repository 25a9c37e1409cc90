"""What hearing libjpeg's warnings costs per stored JPEG tile (runtime/slide/strict_jpeg.py).

Three ways over every stored tile of a slide's level, alternating in rounds: tifffile + imagecodecs'
decode (the direct decoder before damaged tiles were detected), the strict decode whose pixels are used
("decode" mode, the same bytes) and the 1/8-scale strict check that "check" mode adds to tifffile's decode.

    python -m segcls.bench.strict_jpeg_cost SLIDE [--level 0] [--rounds 9]
"""

from __future__ import annotations

import argparse
import statistics
import time

import tifffile

from segcls.runtime.slide.strict_jpeg import StrictJpeg


def per_tile_us(path: str, level: int = 0, rounds: int = 9) -> dict[str, list[float]]:
    """Microseconds per tile of each way, one figure per round."""
    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].levels[level].keyframe
        tiles = []
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
            tif.filehandle.seek(offset)
            tiles.append((len(tiles), tif.filehandle.read(count)))
        strict = StrictJpeg(page, decodes=True)  # reads the file (is it JFIF?)
    ways = {
        "tifffile decode (imagecodecs)": lambda i, d: page.decode(d, i, jpegtables=page.jpegtables),
        "strict decode (decode mode)": lambda i, d: strict.decode(d),
        "1/8 strict check (check mode adds)": lambda i, d: strict.check(d),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            start = time.perf_counter()
            for i, data in tiles:
                way(i, data)
            times[name].append((time.perf_counter() - start) / len(tiles) * 1e6)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide")
    parser.add_argument("--level", type=int, default=0, help="pyramid level [default: 0]")
    parser.add_argument("--rounds", type=int, default=9, help="alternating rounds [default: 9]")
    args = parser.parse_args()
    times = per_tile_us(args.slide, args.level, args.rounds)
    print(f"{args.slide} level {args.level}: us per tile, median (min) of {args.rounds} alternating rounds")
    for name, values in times.items():
        print(f"  {name:36s} {statistics.median(values):8.1f} ({min(values):.1f})")


if __name__ == "__main__":
    main()
