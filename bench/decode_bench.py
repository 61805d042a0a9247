"""Decode throughput: our loader against plain pydicom on the same real files.

Input: the real DICOM files shipped by pydicom and pydicom-data (those our loader
decodes). Output: images per second of ``decode_image_bytes`` (bytes to display-
ready float32 in [0, 1]) and of plain pydicom (``dcmread`` then
``pixel_array(ds, index=frames // 2)``: the same single frame we decode), their
ratio, and the file count; ``__main__`` prints it and writes
bench/results/decode_bench.json.

Reading: each side reads the file's bytes from disk inside its timed region, every
round ("read cold" as far as a user process can: the OS page cache is warm after
the first read, which is also how a worker re-reading a shared store behaves).
One untimed round first imports plugins and fills our palette cache (a modality
sends the same palette with every image). The two sides alternate which goes
first per file, so neither always finds the caches warmed by the other.
"""

from __future__ import annotations

import io
import json
import sys
import time
import warnings
from pathlib import Path

import pydicom
from pydicom.pixels import pixel_array

from streaming.local.reference_data import scanner_files
from streaming.imaging.decoding import DICOM, decode_image_bytes
from streaming.imaging.types import ImageLimits, ImageRejected

RESULTS = Path(__file__).resolve().parent / "results" / "decode_bench.json"


def decodable_files(limits: ImageLimits) -> list[tuple[Path, int]]:
    """(path, frame index) for the corpus files both our loader and plain pydicom decode."""
    chosen = []
    for path in scanner_files():
        try:
            image = decode_image_bytes(path.read_bytes(), DICOM, limits)
            _pydicom(path, image.frame_index)
        except ImageRejected:
            continue
        except Exception:  # pydicom alone cannot (e.g. a file without transfer syntax)
            continue
        chosen.append((path, image.frame_index))
    return chosen


def _ours(path: Path, limits: ImageLimits) -> float:
    start = time.perf_counter()
    decode_image_bytes(path.read_bytes(), DICOM, limits)
    return time.perf_counter() - start


def _pydicom(path: Path, frame_index: int) -> float:
    start = time.perf_counter()
    dataset = pydicom.dcmread(io.BytesIO(path.read_bytes()))
    pixel_array(dataset, index=frame_index)
    return time.perf_counter() - start


def run_decode_benchmark(repeats: int = 3) -> dict:
    """Images/s of our decoder and of plain pydicom over ``repeats`` rounds of the corpus.

    Each file's time is its best over the rounds, as ``timeit`` advises: other
    work on the machine only ever adds time, and one disturbed JPEG 2000 decode
    (half a second) would otherwise swing the whole figure. Images/s is the file
    count over the sum of those best times.
    """
    limits = ImageLimits()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about odd test files
        files = decodable_files(limits)  # also the untimed warm-up round
        ours = [[] for _ in files]
        theirs = [[] for _ in files]
        for round_number in range(repeats):
            for position, (path, frame_index) in enumerate(files):
                if (round_number + position) % 2:
                    theirs[position].append(_pydicom(path, frame_index))
                    ours[position].append(_ours(path, limits))
                else:
                    ours[position].append(_ours(path, limits))
                    theirs[position].append(_pydicom(path, frame_index))
    ours_s = sum(min(times) for times in ours)
    theirs_s = sum(min(times) for times in theirs)
    return {
        "decode_images_per_s": round(len(files) / ours_s, 2),
        "pydicom_images_per_s": round(len(files) / theirs_s, 2),
        "decode_over_pydicom_ratio": round(theirs_s / ours_s, 3),
        "files": len(files),
    }


if __name__ == "__main__":
    figures = run_decode_benchmark(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
    print(json.dumps(figures, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
