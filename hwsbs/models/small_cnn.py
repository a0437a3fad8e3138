"""The default model: a small CNN that trains in seconds on 8x8 digits and still has prunable pairs."""

from __future__ import annotations

from torch import Tensor, nn

from .registry import register_model

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """conv-bn-relu x3 with a stride-2 middle conv, global average pool, linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        return self.fc(self.pool(x).flatten(1))


@register_model("small_cnn")
def small_cnn(num_classes: int = 10, in_channels: int = 1, image_size: tuple[int, int] = (8, 8)) -> nn.Module:
    """The default model (works at any input size thanks to global pooling)."""
    return SmallCNN(num_classes=num_classes, in_channels=in_channels)
