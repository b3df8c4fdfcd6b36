#!/usr/bin/env python3
"""Writes Fashion-MNIST test image INDEX as a 28x28 grayscale PNG (stdlib only).

    python3 clients/python/export_image.py 0 shirt.png   # prints the image's label
"""
import gzip
import struct
import sys
import zlib

DIR = "/usr/share/datasets/fashion-mnist"
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
          "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def main():
    index, out = int(sys.argv[1]), sys.argv[2]
    with gzip.open(f"{DIR}/t10k-images-idx3-ubyte.gz") as f:
        magic, count, rows, cols = struct.unpack(">IIII", f.read(16))
        assert magic == 2051 and 0 <= index < count, "bad file or index"
        f.seek(16 + index * rows * cols)
        pixels = f.read(rows * cols)
    with gzip.open(f"{DIR}/t10k-labels-idx1-ubyte.gz") as f:
        f.seek(8 + index)
        label = f.read(1)[0]
    raw = b"".join(b"\x00" + pixels[r * cols:(r + 1) * cols] for r in range(rows))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    png = (b"\x89PNG\r\n\x1a\n"
           + chunk(b"IHDR", struct.pack(">IIBBBBB", cols, rows, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    with open(out, "wb") as f:
        f.write(png)
    print(f"test image {index}: label {label} ({LABELS[label]}) -> {out}")


if __name__ == "__main__":
    main()
