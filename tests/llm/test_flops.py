import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from llm.config import ModelConfig
from llm.flops import flops_per_token, throughput
from llm.model import Transformer
from ops.plan import peak_tflops_for


@pytest.mark.parametrize("overrides", [{}, {"kv_heads": 2}, {"tie_embeddings": True}])
def test_analytic_flops_equal_three_times_counted_forward_flops(overrides):
    cfg = ModelConfig(dim=64, layers=3, heads=4, seq_len=32, multiple_of=32, **overrides)
    model = Transformer(cfg, 101)
    x = torch.zeros(2, cfg.seq_len, dtype=torch.long)
    # The math kernel spells attention as matmuls, which the counter sees (full T x T, no causal discount).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x)
    forward_per_token = counter.get_total_flops() / x.numel()
    assert flops_per_token(cfg, 101) == pytest.approx(3 * forward_per_token, rel=1e-9)


def test_attention_term_grows_with_context():
    cfg = ModelConfig(dim=64, layers=2, heads=4)
    assert flops_per_token(cfg, 100, 2048) - flops_per_token(cfg, 100, 1024) == 12 * 2 * 64 * 1024


def test_peak_table_and_mfu():
    assert peak_tflops_for("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops_for("NVIDIA H200") == 989.0
    assert peak_tflops_for("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops_for("cpu") is None
    tflops, mfu = throughput(1e9, tokens=1000, seconds=2.0, devices=1, peak_tflops=1.0)
    assert tflops == pytest.approx(0.5)
    assert mfu == pytest.approx(0.5)
    assert throughput(1e9, 1000, 2.0, 1, None)[1] is None
