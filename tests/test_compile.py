"""``crossent.cross_entropy`` under ``torch.compile(fullgraph=True)``: no graph break.

Value checks that read tensor contents (target bounds) become traced assertions under
compilation instead of host-side ``if``s, so a bad target still raises.
"""

import pytest
import torch
import torch.nn.functional as F

import crossent as ce


@pytest.mark.parametrize("kwargs", [{}, {"label_smoothing": 0.1, "ignore_index": 3},
                                    {"weight": torch.rand(10, dtype=torch.float64)}],
                         ids=["plain", "smoothing-ignore", "weight"])
def test_fullgraph_matches_pytorch(kwargs):
    torch._dynamo.reset()
    x = torch.randn(16, 10, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 10, (16,))
    compiled = torch.compile(lambda x, y: ce.cross_entropy(x, y, **kwargs),
                             backend="aot_eager", fullgraph=True)
    loss = compiled(x, y)
    (grad,) = torch.autograd.grad(loss, x)
    ref = F.cross_entropy(x, y, **kwargs)
    (ref_grad,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad, ref_grad)


def test_fullgraph_still_rejects_out_of_range_target():
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, y: ce.cross_entropy(x, y), backend="aot_eager",
                             fullgraph=True)
    x = torch.randn(4, 10)
    compiled(x, torch.tensor([0, 1, 2, 3]))  # compiles with a valid target first
    with pytest.raises(RuntimeError, match="out of bounds"):
        compiled(x, torch.tensor([0, 1, 2, 12]))
