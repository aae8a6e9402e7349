"""Reading a model's logit transform from probed scores (no transformers needed), and
crossent importing without transformers."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from crossent import ArgumentError
from crossent.integrations._logit_transform import fit_score_transform, probe_scores

pytestmark = pytest.mark.slow

Z = probe_scores(4 * 50)


@pytest.mark.parametrize("g, scale, cap", [
    (lambda z: z, 1.0, None),                                    # Llama
    (lambda z: z * 0.0625, 0.0625, None),                        # Cohere's logit_scale
    (lambda z: z / 8.0, 0.125, None),                            # Granite's logits_scaling
    (lambda z: torch.tanh(z / 30.0) * 30.0, 1.0, 30.0),          # Gemma-2's soft cap
    (lambda z: torch.tanh(z * 0.5 / 15.0) * 15.0, 0.5, 15.0),    # scale, then cap
    (lambda z: 2.0 * (torch.tanh(z / 10.0) * 10.0), 2.0, 20.0),  # cap, then scale
    (lambda z: torch.tanh(z), 1.0, 1.0),                         # a bare tanh is the cap 1
])
def test_recovers_scale_and_cap(g, scale, cap):
    t = fit_score_transform(Z, g(Z))
    assert t.logit_scale == pytest.approx(scale, rel=1e-12)
    assert (t.softcap is None) == (cap is None)
    if cap is not None:
        assert t.softcap == pytest.approx(cap, rel=1e-12)


def test_float32_observations_are_fitted_to_float32_accuracy():
    t = fit_score_transform(Z, (torch.tanh(Z / 30.0) * 30.0).float())
    assert t.softcap == 30.0 and t.logit_scale == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("g, message", [
    (lambda z: z + 1.0, "cannot reproduce"),
    (lambda z: z.abs(), "cannot reproduce"),
    (lambda z: -z, "not a positive scale"),
    (lambda z: torch.sigmoid(z), "not a symmetric soft cap"),
    (lambda z: z[:-1], "selects or adds logits"),
    (lambda z: torch.where(z.abs() < 1, z, float("nan")), "inf/NaN"),
])
def test_anything_else_is_refused(g, message):
    with pytest.raises(ArgumentError, match=message):
        fit_score_transform(Z, g(Z), what="TestModel")


def test_probe_scores_shape():
    z = probe_scores(9)
    assert z.dtype == torch.float64 and z.numel() == 9 and z[0] == 1e30 and z[1] == -1e30
    assert 0.0 in z[2:].tolist()
    with pytest.raises(ValueError):
        probe_scores(7)


def test_crossent_imports_without_transformers():
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import crossent, crossent.integrations.transformers as hf, torch\n"
        "try:\n"
        "    hf.apply(torch.nn.Linear(2, 3))\n"
        "except crossent.ArgumentError as e:\n"
        "    print('refused:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused: Linear has no output layer" in out.stdout
