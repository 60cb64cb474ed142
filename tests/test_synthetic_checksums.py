"""The synthetic generator writes the same bytes as when the checksums in ``tests/data/synthetic_checksums.json``
were recorded (a small image split and a small video split, every file, sha256).

A refactoring of ``cmpc.data.synthetic`` must keep this test passing. A deliberate change of the generated data
bumps ``GENERATOR_VERSION`` and rewrites the checksums with ``python tests/test_synthetic_checksums.py --write``.

The bytes depend on the library versions (JPEG and PNG encoders, OpenCV's resampling) and on OpenCV's SIMD path:
they are the same on x86-64 with AVX-512 or AVX2 only (checked with ``OPENCV_CPU_DISABLE=AVX512-SKX`` and
``NPY_DISABLE_CPU_FEATURES``), but OpenCV without AVX2 writes other video frames. The test therefore runs where
the recorded library versions are installed (``constraints.txt``) on an x86-64 CPU with AVX2, and says why it
skips elsewhere.
"""
from __future__ import annotations

import hashlib
import json
import platform
import sys
from importlib.metadata import version
from pathlib import Path

import cv2
import pytest

from cmpc.data import synthetic as syn

CHECKSUMS = Path(__file__).resolve().parent / "data" / "synthetic_checksums.json"
# every kind, negatives, two splits each; small enough to generate in about a second
IMAGE = dict(seed=11, splits={"train": 4, "val": 2}, negative=0.5, progress=False,
             kinds={"entity": 1, "attribute": 1, "relation": 2, "location": 1})
VIDEO = dict(seed=11, splits={"train": 3, "valid": 2}, num_frames=4, negative=0.5, progress=False)


LIBRARIES = ("numpy", "opencv-python-headless", "pillow", "pycocotools")


def _versions() -> dict:
    return {name: version(name) for name in LIBRARIES}


def _skip_reason(recorded: dict) -> str | None:
    opencv_paths = [t.lstrip("*") for t in cv2.getCPUFeaturesLine().split()]  # "*AVX2?" = disabled
    if platform.machine().lower() not in ("x86_64", "amd64") or "AVX2" not in opencv_paths:
        return "checksums were recorded on x86-64 with AVX2; OpenCV's other SIMD paths round differently"
    if recorded != _versions():
        return f"checksums were recorded with {recorded}, installed: {_versions()} (see constraints.txt)"
    return None


def _digests(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _generate(tmp: Path) -> dict:
    return {"libraries": _versions(), "image": _digests(syn.generate_image_benchmark(tmp / "image", **IMAGE)),
            "video": _digests(syn.generate_video_benchmark(tmp / "video", **VIDEO))}


@pytest.mark.parametrize("layout", ["image", "video"])
def test_generated_split_matches_recorded_checksums(tmp_path, layout):
    data = json.loads(CHECKSUMS.read_text())
    reason = _skip_reason(data["libraries"])
    if reason:
        pytest.skip(reason)
    recorded = data[layout]
    gen = syn.generate_image_benchmark if layout == "image" else syn.generate_video_benchmark
    got = _digests(gen(tmp_path / layout, **(IMAGE if layout == "image" else VIDEO)))
    assert sorted(got) == sorted(recorded), "the generator writes other files than recorded"
    changed = sorted(name for name in recorded if got[name] != recorded[name])
    assert not changed, f"{len(changed)} of {len(recorded)} files changed, e.g. {changed[:5]}"


if __name__ == "__main__":  # python tests/test_synthetic_checksums.py --write
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_synthetic_checksums.py --write  (records the current generator's output)")
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        CHECKSUMS.parent.mkdir(exist_ok=True)
        CHECKSUMS.write_text(json.dumps(_generate(Path(d)), indent=1, sort_keys=True) + "\n")
    print(f"wrote {CHECKSUMS}")
