#!/usr/bin/env python3
"""Trains a small classifier on an image folder with Gaussian noise
augmentation at sigma (what randomized smoothing needs of a base classifier)
and exports it to TorchScript, normalization inside the module, ready for
`smoothcert import`.

    python train_classifier.py --data data/fashion-folder --channels 1 \
        --sigma 0.25 --epochs 10 --out model.pt
"""
import argparse
import time

import torch
import torch.nn as nn
from torchvision import datasets, transforms


class Net(nn.Module):
    """Takes [B, C, H, W] pixels in [0, 1], as smoothcert sends them (noise
    included), and returns [B, classes] logits."""

    def __init__(self, channels, classes, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        block = lambda i, o: [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]
        self.features = nn.Sequential(
            *block(channels, 32), *block(32, 32), nn.MaxPool2d(2),
            *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4))
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 16, 256), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(256, classes))

    def forward(self, x):
        return self.head(self.features((x - self.mean) / self.std))


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions with batch norm and a skip."""

    def __init__(self, i, o, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(i, o, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(o)
        self.conv2 = nn.Conv2d(o, o, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(o)
        self.skip = nn.Sequential()
        if stride != 1 or i != o:
            self.skip = nn.Sequential(nn.Conv2d(i, o, 1, stride, bias=False), nn.BatchNorm2d(o))

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.skip(x))


class ResNet(nn.Module):
    """A CIFAR-style ResNet (He et al.'s 6n + 2 layout with n = 1, widths
    16/32/64): any input size, [B, C, H, W] pixels in [0, 1] to [B, classes]."""

    def __init__(self, channels, classes, mean, std, width=16):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.layers = nn.Sequential(BasicBlock(width, width, 1),
                                    BasicBlock(width, 2 * width, 2),
                                    BasicBlock(2 * width, 4 * width, 2))
        self.head = nn.Linear(4 * width, classes)

    def forward(self, x):
        h = self.layers(self.stem((x - self.mean) / self.std))
        return self.head(h.mean(dim=(2, 3)))


def load(root, channels):
    """The whole split as two tensors (ImageFolder: classes in sorted folder order)."""
    tf = [transforms.Grayscale(1)] if channels == 1 else []
    ds = datasets.ImageFolder(root, transform=transforms.Compose(tf + [transforms.ToTensor()]))
    x = torch.stack([img for img, _ in ds])
    y = torch.tensor(ds.targets)
    return x, y, ds.classes


def accuracy(model, x, y, sigma):
    model.eval()
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
        noisy = (model(x + sigma * torch.randn_like(x)).argmax(1) == y).float().mean().item()
    return clean, noisy


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="image folder with train/ and test/")
    ap.add_argument("--channels", type=int, choices=[1, 3], default=3)
    ap.add_argument("--arch", choices=["cnn", "resnet"], default="cnn")
    ap.add_argument("--sigma", type=float, default=0.25)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="model.pt")
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    x, y, classes = load(f"{args.data}/train", args.channels)
    x_test, y_test, test_classes = load(f"{args.data}/test", args.channels)
    assert classes == test_classes, "train/ and test/ must have the same class folders"
    mean = x.mean(dim=(0, 2, 3)).tolist()
    std = x.std(dim=(0, 2, 3)).tolist()
    net = {"cnn": Net, "resnet": ResNet}[args.arch]
    model = net(args.channels, len(classes), mean, std)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * ((len(x) + args.batch_size - 1) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr * 3, total_steps=steps)
    print(f"{len(x)} training images, {len(x_test)} test images, classes {classes}")
    for epoch in range(args.epochs):
        model.train()
        t0, total = time.time(), 0.0
        for idx in torch.randperm(len(x)).split(args.batch_size):
            xb = x[idx] + args.sigma * torch.randn_like(x[idx])  # Gaussian noise augmentation
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        clean, noisy = accuracy(model, x_test, y_test, args.sigma)
        print(f"epoch {epoch + 1}: loss {total / len(x):.3f}, test accuracy clean {clean:.3f}, "
              f"noisy {noisy:.3f} ({time.time() - t0:.0f} s)")

    model.eval()  # BatchNorm's running statistics, no dropout: deterministic logits
    torch.jit.script(model).save(args.out)
    with open(args.out + ".labels", "w") as f:
        f.write("\n".join(classes) + "\n")
    print(f"wrote {args.out} (TorchScript) and {args.out}.labels")


if __name__ == "__main__":
    main()
