"""Makes an ImageNet-sized copy of a folder of photos for `cargo xtask bench-data --dir DIR`.

ILSVRC-2012's photos are mostly 500 pixels on the longer side (mean about 0.18 MP), baseline
JPEGs with 4:2:0 chroma. Larger photos cost both decoders more per image and shift the ratio
against zune-jpeg (see README, Ingestion), so the ingestion goal is judged on photos of
ImageNet's size: every colour (RGB-mode) .jpg/.jpeg under SRC is scaled (Lanczos) so that
its longer side is at most 500 and saved as a quality-90 JPEG under DST with the same name;
greyscale files are left out (ImageNet has few). On Debian's opencv-doc photos
(/usr/share/doc/opencv-doc/examples/data) that keeps 32 of the 59.

    python3 docs/make_imagenet_sized.py SRC DST
"""
import pathlib
import sys

from PIL import Image


def main():
    src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    dst.mkdir(parents=True, exist_ok=True)
    exts = {".jpg", ".jpeg"}
    pixels = []
    for p in sorted(src.rglob("*")):
        if p.suffix.lower() not in exts:
            continue
        im = Image.open(p)
        if im.mode != "RGB":
            continue
        w, h = im.size
        s = 500 / max(w, h)
        if s < 1:
            im = im.resize((round(w * s), round(h * s)), Image.LANCZOS)
        im.save(dst / (p.stem + ".jpg"), quality=90)
        pixels.append(im.size[0] * im.size[1])
    mean = sum(pixels) / max(len(pixels), 1)
    print(f"{len(pixels)} photos written to {dst}, mean {mean / 1e6:.2f} MP")


if __name__ == "__main__":
    main()
