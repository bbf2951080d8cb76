"""The torchvision ingestion baseline for `cargo xtask bench-data --dir DIR`: Pillow decode,
convert to RGB, bilinear resize of the shorter side to 256 (torchvision's Resize(256)), centre
crop 256 x 256, on one core, median of three passes over the folder's .jpg/.jpeg/.png files.

    taskset -c 0 python3 docs/bench_pil_ingest.py DIR
"""
import io
import pathlib
import sys
import time

from PIL import Image


def ingest(blob, s=256):
    im = Image.open(io.BytesIO(blob)).convert("RGB")
    w, h = im.size
    if w < h:
        nw, nh = s, int(s * h / w)
    else:
        nw, nh = int(s * w / h), s
    im = im.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - s) // 2, (nh - s) // 2
    return im.crop((left, top, left + s, top + s)).tobytes()


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    exts = {".jpg", ".jpeg", ".png"}
    blobs = [p.read_bytes() for p in sorted(root.rglob("*")) if p.suffix.lower() in exts]
    rates = []
    for _ in range(3):
        t = time.perf_counter()
        for b in blobs:
            ingest(b)
        rates.append(len(blobs) / (time.perf_counter() - t))
    rates.sort()
    print(f"Pillow {Image.__version__}: {len(blobs)} files, {rates[1]:.0f} img/s on one core")


if __name__ == "__main__":
    main()
