import pytest
import torch

from llm.config import ModelConfig
from llm.model import Transformer, next_token_loss
from llm.parallelize import checkpoint_blocks, compile_blocks

CFG = ModelConfig(dim=32, layers=2, heads=4, seq_len=16, multiple_of=16)


def loss_and_grads(model, x):
    model.zero_grad()
    loss = next_token_loss(model(x[:, :-1]), x[:, 1:])
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_activation_checkpointing_keeps_names_loss_and_gradients():
    x = torch.randint(0, 50, (2, 13), generator=torch.Generator().manual_seed(0))
    plain = Transformer(CFG, 50)
    wrapped = checkpoint_blocks(Transformer(CFG, 50))
    assert list(plain.state_dict()) == list(wrapped.state_dict())
    loss_a, grads_a = loss_and_grads(plain, x)
    loss_b, grads_b = loss_and_grads(wrapped, x)
    assert loss_a == loss_b
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=0, atol=0)


def test_compiled_blocks_keep_names_and_match_eager_loss_and_gradients():
    x = torch.randint(0, 50, (2, 13), generator=torch.Generator().manual_seed(0))
    plain = Transformer(CFG, 50)
    compiled = compile_blocks(checkpoint_blocks(Transformer(CFG, 50)))
    assert list(plain.state_dict()) == list(compiled.state_dict())
    assert all(block._compiled_call_impl is not None for block in compiled.layers)
    loss_a, grads_a = loss_and_grads(plain, x)
    loss_b, grads_b = loss_and_grads(compiled, x)
    assert loss_b == pytest.approx(loss_a, rel=1e-6)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, msg=name)
