"""crossent.integrations.trl under FSDP2 (``fully_shard``) on 2 Gloo ranks.

A tiny Qwen2 model, each decoder layer, the output layer and the root wrapped with
``fully_shard`` (so the head's weight is a DTensor inside the forward), each rank with its
own tokens. Oracle: one process holding the whole model, the mean of the ranks' losses
(FSDP2 averages gradients over the ranks); every gradient is compared after gathering.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("torch.distributed.fsdp")

pytestmark = pytest.mark.slow

V = 40


def _model():
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False)
    return transformers.Qwen2ForCausalLM(config)


def _data(rank):
    g = torch.Generator().manual_seed(50 + rank)
    ids = torch.randint(0, V, (2, 5 + rank), generator=g)  # uneven lengths
    labels = ids.clone()
    labels[:, : 2 + rank] = -100
    return ids, labels


def _loss(model, ids, labels):
    out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    return out.loss + 0.3 * out.entropy.sum() / out.label_mask.sum()


def _job(rank, world_size, _):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from crossent.integrations import trl as ce_trl

    mesh = init_device_mesh("cpu", (world_size,))
    model = _model()
    ce_trl.add_fused_lm_head(model, temperature=0.9, outputs=("log_probs", "entropy"))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model.lm_head, mesh=mesh)
    fully_shard(model, mesh=mesh)
    head_type = type(model.lm_head.weight).__name__
    _loss(model, *_data(rank)).backward()
    grads = {k: p.grad.full_tensor() for k, p in model.named_parameters()}
    return {"head_type": head_type, "grads": grads}


def test_fsdp2_sharded_head_gradients_equal_one_process(rank_pool):
    from crossent.integrations import trl as ce_trl

    results = rank_pool(2).run(_job, None)
    assert {r["head_type"] for r in results} == {"DTensor"}
    oracle = _model()
    ce_trl.add_fused_lm_head(oracle, temperature=0.9, outputs=("log_probs", "entropy"))
    (sum(_loss(oracle, *_data(r)) for r in range(2)) / 2).backward()
    for name, p in oracle.named_parameters():
        for rank, r in enumerate(results):
            torch.testing.assert_close(r["grads"][name], p.grad, rtol=1e-4, atol=1e-6,
                                       msg=lambda m: f"rank {rank} {name}: {m}")


class _Net(torch.nn.Module):
    """A body and an output layer, the log-probabilities taken straight from the head's
    weight (a DTensor when the head is wrapped on its own)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.body = torch.nn.Linear(6, 12)
        self.head = torch.nn.Linear(12, 30)

    def forward(self, x, y):
        import crossent

        lp, ent = crossent.linear_token_log_probs(
            torch.tanh(self.body(x)), self.head.weight, y, linear_bias=self.head.bias,
            temperature=0.8, return_entropy=True)
        return -lp.mean() + 0.1 * ent.mean()


def _net_data(rank):
    g = torch.Generator().manual_seed(70 + rank)
    return torch.randn(5 + 2 * rank, 6, generator=g), torch.randint(0, 30, (5 + 2 * rank,), generator=g)


def _net_job(rank, world_size, _):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world_size,))
    net = _Net()
    fully_shard(net.head, mesh=mesh)
    fully_shard(net, mesh=mesh)
    net(*_net_data(rank)).backward()
    return {k: p.grad.full_tensor() for k, p in net.named_parameters()}


def test_linear_token_log_probs_takes_an_fsdp2_sharded_weight(rank_pool):
    results = rank_pool(2).run(_net_job, None)
    oracle = _Net()
    (sum(oracle(*_net_data(r)) for r in range(2)) / 2).backward()
    for name, p in oracle.named_parameters():
        for rank, grads in enumerate(results):
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-7,
                                       msg=lambda m: f"rank {rank} {name}: {m}")
