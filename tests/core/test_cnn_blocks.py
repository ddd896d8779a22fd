"""Small CNN blocks end to end: a ResNet-like stage, a MobileNetV3-like block, a 1-D encoder."""

import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import export_and_check


def _randomize_bn(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))  # fmt: skip

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 5, 2, 2, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))  # fmt: skip
        self.layer1 = BasicBlock(8, 8, 1)
        self.layer2 = BasicBlock(8, 16, 2)
        self.fc = nn.Linear(16 + 16, 10)

    def forward(self, x):
        y = self.layer2(self.layer1(self.stem(x)))
        avg = F.adaptive_avg_pool2d(y, 1).flatten(1)
        mx = F.adaptive_max_pool2d(y, (1, 1)).flatten(1)
        return self.fc(torch.cat([avg, mx], dim=1)), F.avg_pool2d(y, 2, ceil_mode=True)


def test_resnet_like_dynamic_batch_and_size(tmp_path):
    model = _randomize_bn(TinyResNet())
    result = export_and_check(
        model, (torch.randn(2, 3, 32, 40),), tmp_path,
        dynamic_axes={"x": {0: "N", 2: "H", 3: "W"}},
        check_inputs=[(torch.randn(1, 3, 48, 32),)], atol=2e-4,
    )  # fmt: skip
    assert result.op_histogram["conv"] == 6


class SqueezeExcite(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    """MobileNetV3: expand 1x1 -> depthwise 3x3 -> squeeze-excite -> project 1x1."""

    def __init__(self, c=8, expand=24):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c, expand, 1, bias=False), nn.BatchNorm2d(expand),
                                    nn.Hardswish())  # fmt: skip
        self.dw = nn.Sequential(
            nn.Conv2d(expand, expand, 3, 1, 1, groups=expand, bias=False),
            nn.BatchNorm2d(expand), nn.ReLU6(),
        )  # fmt: skip
        self.se = SqueezeExcite(expand)
        self.project = nn.Sequential(nn.Conv2d(expand, c, 1, bias=False), nn.BatchNorm2d(c))
        self.grouped = nn.Conv2d(c, c, 3, 2, 1, groups=2)

    def forward(self, x):
        y = x + self.project(self.se(self.dw(self.expand(x))))
        return F.hardswish(self.grouped(y))


def test_mobilenet_v3_like_block(tmp_path):
    model = _randomize_bn(InvertedResidual())
    export_and_check(
        model, (torch.randn(2, 8, 14, 12),), tmp_path,
        dynamic_axes={"x": {2: "H", 3: "W"}}, check_inputs=[(torch.randn(2, 8, 9, 16),)],
        atol=2e-4,
    )  # fmt: skip


class UNetUp(nn.Module):
    """Decoder stage: transposed conv, upsample, pad to the skip size, concat, conv + GroupNorm."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.conv = nn.Conv2d(8, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.shuffle_conv = nn.Conv2d(4, 16, 1)

    def forward(self, x, skip):
        y = self.up(x)
        y = F.pad(y, (0, skip.shape[3] - y.shape[3], 0, skip.shape[2] - y.shape[2]))
        y = F.silu(self.norm(self.conv(torch.cat([y, skip], dim=1))))
        z = F.interpolate(y, scale_factor=2, mode="bilinear")
        return z + F.pixel_shuffle(self.shuffle_conv(y), 2)


def test_unet_like_decoder(tmp_path):
    export_and_check(UNetUp().eval(), (torch.randn(1, 8, 5, 6), torch.randn(1, 4, 11, 13)),
                     tmp_path, atol=2e-4)  # fmt: skip


class Encoder1d(nn.Module):
    """Audio-style encoder on a dynamic time axis: strided/dilated convs, norms, GELU."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(4, 16, 5, stride=2, padding=2)
        self.norm1 = nn.BatchNorm1d(16)
        self.conv2 = nn.Conv1d(16, 16, 3, dilation=2, padding="same", groups=4)
        self.norm2 = nn.LayerNorm(16)
        self.up = nn.ConvTranspose1d(16, 8, 4, stride=2, padding=1)

    def forward(self, x):
        y = F.gelu(self.norm1(self.conv1(x)))
        y = y + self.conv2(y)
        y = self.norm2(y.transpose(1, 2)).transpose(1, 2)
        return self.up(F.max_pool1d(y, 2, ceil_mode=True))


def test_conv1d_encoder_dynamic_time(tmp_path):
    model = _randomize_bn(Encoder1d())
    export_and_check(
        model, (torch.randn(2, 4, 50),), tmp_path,
        dynamic_axes={"x": {2: "T"}},
        check_inputs=[(torch.randn(2, 4, 37),), (torch.randn(2, 4, 64),)], atol=2e-4,
    )  # fmt: skip
