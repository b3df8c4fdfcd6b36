#!/usr/bin/env python3
"""Writes part of Fashion-MNIST as an image folder, the layout torchvision's
ImageFolder reads: OUT/train/<class>/<n>.png and OUT/test/<class>/<n>.png.
A stand-in for your own folder of labelled images (stdlib and Pillow only).

    python3 make_image_folder.py --out data/fashion-folder --every 5
"""
import argparse
import gzip
import os
import random
import shutil
import struct

from PIL import Image

SOURCE = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
# Folder names: the dataset's class names ("/" cannot be in a folder name).
CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(prefix):
    with gzip.open(f"{SOURCE}/{prefix}-images-idx3-ubyte.gz") as f:
        magic, count, rows, cols = struct.unpack(">IIII", f.read(16))
        assert magic == 2051, f"{prefix}: not an IDX image file"
        pixels = f.read(count * rows * cols)
    with gzip.open(f"{SOURCE}/{prefix}-labels-idx1-ubyte.gz") as f:
        magic, n = struct.unpack(">II", f.read(8))
        assert magic == 2049 and n == count, f"{prefix}: labels do not match images"
        labels = f.read(n)
    return pixels, labels, rows, cols


def tinted(gray, size, rng):
    """gray centred on a black SIZE x SIZE canvas, each channel scaled by its
    own factor in [0.4, 1]: colour that carries no label, so a classifier
    has to use all three channels' shapes rather than one."""
    canvas = Image.new("L", (size, size))
    canvas.paste(gray, ((size - gray.width) // 2, (size - gray.height) // 2))
    channels = [canvas.point(lambda v, f=rng.uniform(0.4, 1.0): int(v * f)) for _ in range(3)]
    return Image.merge("RGB", channels)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--every", type=int, default=5, help="keep every k-th image")
    ap.add_argument("--rgb", type=int, metavar="SIZE",
                    help="RGB images of SIZE x SIZE instead (Fashion-MNIST padded to SIZE, "
                         "each image tinted by a colour of its own): a stand-in for an RGB dataset")
    args = ap.parse_args()
    # Written beside OUT and renamed at the end: an interrupted run leaves no
    # half folder that looks finished.
    tmp = args.out.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    for split, prefix in [("train", "train"), ("test", "t10k")]:
        pixels, labels, rows, cols = read_idx(prefix)
        size = rows * cols
        for c in CLASSES:
            os.makedirs(os.path.join(tmp, split, c), exist_ok=True)
        kept = 0
        for i in range(0, len(labels), args.every):
            img = Image.frombytes("L", (cols, rows), pixels[i * size:(i + 1) * size])
            if args.rgb:
                img = tinted(img, args.rgb, random.Random(f"{split}-{i}"))
            img.save(os.path.join(tmp, split, CLASSES[labels[i]], f"{i:05d}.png"))
            kept += 1
        print(f"{split}: {kept} images in {args.out}/{split}")
    os.rename(tmp, args.out)


if __name__ == "__main__":
    main()
