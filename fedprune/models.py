"""Model zoo: every architecture fedprune trains, built by name.

``build_model(name, in_channels, num_classes, image_size)`` returns a freshly
initialised ``nn.Module`` whose output is ``(batch, num_classes)`` logits. The
same name and seed always give the same weights, so a client and the server can
rebuild the dense reference architecture independently. ``width`` scales every
hidden layer to ``scaled_width(n, width)`` channels/units (the LeNets, ResNet-8
and the VGG): the same architecture as the first-channels sub-network of the
dense model that the width baselines train (``fedprune.methods.submodel``).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn


def scaled_width(n: int, width: float) -> int:
    """``ceil(width * n)`` clamped to ``[1, n]``: a layer of ``n`` neurons at width multiplier ``width``."""
    return max(1, min(int(n), math.ceil(width * n - 1e-9)))


class LeNet5(nn.Module):
    """LeNet-5 as in the SeReNe/LOBSTER tables: conv 20 - conv 50 - fc 500 - fc classes."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28, width: float = 1.0):
        super().__init__()
        c1, c2, f1 = (scaled_width(n, width) for n in (20, 50, 500))
        self.conv1 = nn.Conv2d(in_channels, c1, kernel_size=5)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=5)
        side = ((image_size - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(c2 * side * side, f1)
        self.fc2 = nn.Linear(f1, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        return self.fc2(x)


class LeNet300(nn.Module):
    """LeNet-300-100: a fully connected 300-100-classes network."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28, width: float = 1.0):
        super().__init__()
        h1, h2 = scaled_width(300, width), scaled_width(100, width)
        self.fc1 = nn.Linear(in_channels * image_size * image_size, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual add (1x1 conv-BN shortcut when shapes change)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A ResNet-8 for 28x28 inputs: stem 16, three stages (16, 32, 64) of one BasicBlock each."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 widths: tuple[int, ...] = (16, 32, 64), width: float = 1.0):
        super().__init__()
        widths = tuple(scaled_width(w, width) for w in widths)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks, in_planes = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(in_planes, w, stride=1 if i == 0 else 2))
            in_planes = w
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(self.pool(x), 1))


class SmallVGG(nn.Module):
    """A VGG-style net with BatchNorm: [32, 32, M, 64, 64, M, 128, M], then fc 256 - classes."""

    CFG = (32, 32, "M", 64, 64, "M", 128, "M")

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28, width: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                out = scaled_width(int(v), width)
                layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
                c = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2)
        hidden = scaled_width(256, width)
        self.classifier = nn.Sequential(
            nn.Linear(c * 4, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _torchvision_resnet18(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    if image_size < 64:  # CIFAR-style stem: keep spatial resolution on small images
        model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return model


def _torchvision_mobilenet_v2(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2(weights=None, num_classes=num_classes)
    stem = model.features[0][0]
    stride = 1 if image_size < 64 else 2
    model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, stride=stride,
                                     padding=1, bias=False)
    return model


MODELS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "lenet5": lambda c, k, s: LeNet5(c, k, s),
    "lenet300": lambda c, k, s: LeNet300(c, k, s),
    "resnet8": lambda c, k, s: SmallResNet(c, k, s),
    "vgg": lambda c, k, s: SmallVGG(c, k, s),
    "resnet18": _torchvision_resnet18,
    "mobilenet_v2": _torchvision_mobilenet_v2,
}
MODEL_NAMES = tuple(MODELS)
#: The models that take a width multiplier (``build_model(..., width=w)``).
WIDTH_MODELS: dict[str, type] = {"lenet5": LeNet5, "lenet300": LeNet300, "resnet8": SmallResNet, "vgg": SmallVGG}


def build_model(name: str, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                seed: int | None = None, width: float = 1.0) -> nn.Module:
    """Build a fresh model by name; with ``seed`` the initial weights are reproducible.

    ``width`` in (0, 1] scales every hidden layer (models of ``WIDTH_MODELS`` only). Raises
    ``ValueError`` naming the known models when ``name`` is unknown, or for a width that is out of
    range or not supported by the model.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    if not 0.0 < width <= 1.0 or (width != 1.0 and name not in WIDTH_MODELS):
        raise ValueError(f"width={width!r} for model {name!r}: expected 1, or a value in (0, 1] for "
                         f"{', '.join(WIDTH_MODELS)}")

    def make() -> nn.Module:
        if width == 1.0:
            return MODELS[name](in_channels, num_classes, image_size)
        return WIDTH_MODELS[name](in_channels, num_classes, image_size, width=width)

    if seed is None:
        return make()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def example_input(in_channels: int = 1, image_size: int = 28, batch_size: int = 1) -> torch.Tensor:
    """A random input batch of the shape the zoo models take (for tracing and export)."""
    return torch.randn(batch_size, in_channels, image_size, image_size)
