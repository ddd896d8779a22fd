import torch
from torch import nn

from tests.helpers import export_and_check


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.norm = nn.LayerNorm(32)
        self.fc2 = nn.Linear(32, 8)

    def forward(self, x):
        return self.fc2(nn.functional.gelu(self.norm(self.fc1(x))))


def test_mlp_layernorm_gelu_dynamic_batch(tmp_path):
    model = MLP()
    result = export_and_check(
        model,
        (torch.randn(4, 16),),
        tmp_path,
        dynamic_axes={"x": {0: "B"}},
        check_inputs=[(torch.randn(7, 16),)],
    )
    assert result.inputs[0].shape == ("B", 16)
    assert result.op_histogram["matmul"] == 2
