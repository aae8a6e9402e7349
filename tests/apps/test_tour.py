"""Tests of ``crossent tour``: every claim against an independent float64 computation.

The expected values below come from plain ``torch.nn.functional`` in float64 or from hand
formulas (``math.log``), never from the tour's own output. The table ``CLAIMS`` is written
from reading the five articles: for each claim, the number as the article writes it (None
where it states none) and whether, by the precision rule (a number with k decimals must be
the exact value rounded to k decimals), the statement holds.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math

import matplotlib.image as mpimg
import pytest
import torch
import torch.nn.functional as F

from crossent.cli import main

pytestmark = pytest.mark.slow

D = torch.float64
SEEDS = [
    "000_28b471f7a140c5f1.txt",
    "001_2d242eaa971fb9bb.txt",
    "002_cc02474d667e4482.txt",
    "003_e280ffc7b3025e38.txt",
    "004_2d4ee1df4263fd17.txt",
]
# every article with a worked example (all five: 000 is a flattened scrape of 001)
ARTICLES_WITH_EXAMPLES = set(SEEDS)

CLIP = torch.tensor([[2.0, 0.5, -1.0], [0.3, 1.8, 0.2], [-0.5, 0.4, 1.5]], dtype=D)
DIAG = torch.arange(3)
NLL_LOGITS = torch.tensor([[1.0, 2.0, 0.5], [0.1, 0.5, 2.0]], dtype=D)


def _nl(p: float) -> float:
    return -math.log(p)


def _clip_sym() -> float:
    return ((F.cross_entropy(CLIP, DIAG) + F.cross_entropy(CLIP.T, DIAG)) / 2).item()


def _clip(pre: str) -> dict:
    return {
        f"{pre}.neglog_0.1": ("2.3", _nl(0.1), True),
        f"{pre}.neglog_0.9": ("0.11", _nl(0.9), True),
        f"{pre}.clip.row1.p_pos": ("0.71", F.softmax(CLIP, 1)[0, 0].item(), False),
        f"{pre}.clip.row1.p_neg2": ("0.23", F.softmax(CLIP, 1)[0, 1].item(), False),
        f"{pre}.clip.row1.p_neg3": ("0.06", F.softmax(CLIP, 1)[0, 2].item(), False),
        f"{pre}.neglog_0.71": ("0.34", _nl(0.71), True),
        f"{pre}.clip.row1.loss": ("0.34", F.cross_entropy(CLIP[:1], DIAG[:1]).item(), False),
    }


# id -> (stated as written or None, independent exact value, holds? (None: nothing stated))
CLAIMS: dict[str, tuple[str | None, float, bool | None]] = {
    **_clip("a000"),
    **_clip("a001"),
    "a001.clip.row2.p_pos": (None, F.softmax(CLIP, 1)[1, 1].item(), None),
    "a001.clip.row3.p_pos": (None, F.softmax(CLIP, 1)[2, 2].item(), None),
    "a001.clip.loss_i2t": (None, F.cross_entropy(CLIP, DIAG).item(), None),
    "a001.clip.loss_t2i": (None, F.cross_entropy(CLIP.T, DIAG).item(), None),
    "a001.clip.loss_sym": (None, _clip_sym(), None),
    "a002.binary.y1_p0.9": ("0.105", _nl(0.9), True),
    "a002.binary.y1_p0.1": ("2.303", _nl(0.1), True),
    "a002.multi.good": ("0.223", _nl(0.8), True),
    "a002.multi.bad": ("2.303", _nl(0.1), True),
    "a002.grad.mse_prob": ("-0.9", -(1 - 0.1), True),          # d/dp (1-p)^2/2
    "a002.grad.ce_prob": ("-10", -1 / 0.1, True),              # d/dp -log p
    "a002.grad.ce_logit": (None, 0.1 - 1, None),               # sigmoid(z) - y
    "a002.grad.mse_logit": (None, (0.1 - 1) * 0.1 * 0.9, None),
    "a002.snippet.bce_with_logits": ("0.412", F.binary_cross_entropy_with_logits(
        torch.tensor([[2.0], [0.5], [-1.0]], dtype=D),
        torch.tensor([[1.0], [1.0], [0.0]], dtype=D)).item(), False),
    "a002.snippet.cross_entropy": ("0.326", F.cross_entropy(
        torch.tensor([[3.0, 1.0, 0.2], [0.5, 2.0, 0.3]], dtype=D),
        torch.tensor([0, 1])).item(), False),
    "a003.info.certain": ("0", 0.0, True),
    "a003.model1.s1": ("0.91", _nl(0.4), False),
    "a003.model1.s2": ("0.91", _nl(0.4), False),
    "a003.model1.s2_sum": ("1", 0.3 + 0.4 + 0.4, False),
    "a003.model1.s3": ("2.30", _nl(0.1), True),
    "a003.model1.mean": ("1.37", (2 * _nl(0.4) + _nl(0.1)) / 3, False),
    "a003.model2.s1": ("0.35", _nl(0.7), False),
    "a003.model2.s2": ("0.35", _nl(0.7), False),
    "a003.model2.s3": ("1.20", _nl(0.3), True),
    "a003.model2.s3_sum": ("1", 0.3 + 0.4 + 0.4, False),
    "a003.model2.mean": ("0.63", (2 * _nl(0.7) + _nl(0.3)) / 3, False),
    "a003.kl_identity": ("0", 0.0, True),
    "a003.numpy.binary": (None, (2 * _nl(0.9) + _nl(0.8) + _nl(0.6)) / 4, None),
    "a003.numpy.categorical": (None, (_nl(0.7) + _nl(0.8) + _nl(0.6)) / 3, None),
    "a004.one_hot_example": (None, _nl(0.5), None),
    "a004.snippet.loss": ("0.75", F.cross_entropy(NLL_LOGITS, torch.tensor([1, 2])).item(),
                          False),
    "a004.snippet.identical": ("0", 0.0, True),
    "a004.manual.softmax0": ("0.23", F.softmax(NLL_LOGITS[0], 0)[0].item(), True),
    "a004.manual.softmax1": ("0.63", F.softmax(NLL_LOGITS[0], 0)[1].item(), True),
    "a004.manual.softmax2": ("0.14", F.softmax(NLL_LOGITS[0], 0)[2].item(), True),
    "a004.manual.log_softmax0": ("-1.47", F.log_softmax(NLL_LOGITS[0], 0)[0].item(), False),
    "a004.manual.log_softmax1": ("-0.47", F.log_softmax(NLL_LOGITS[0], 0)[1].item(), False),
    "a004.manual.log_softmax2": ("-1.97", F.log_softmax(NLL_LOGITS[0], 0)[2].item(), False),
    "a004.manual.nll": ("0.47", -F.log_softmax(NLL_LOGITS[0], 0)[1].item(), False),
    "a004.manual.cross_entropy": ("0.47", F.cross_entropy(NLL_LOGITS[:1], torch.tensor([1]))
                                  .item(), False),
    "a004.overflow": (None, math.log(1 + math.exp(-1) + math.exp(-2)), None),
}

FIGURES = ["01_neg_log.png", "02_binary_ce.png", "03_grad_ce_vs_mse.png",
           "04_softmax_temperature.png", "05_entropy_ce_kl.png", "06_clip_similarity.png",
           "07_clip_training.png", "08_logsumexp_overflow.png"]
HAS_MARGIN = importlib.util.find_spec("crossent.margin") is not None
if HAS_MARGIN:
    FIGURES.append("09_margins.png")


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    """One full ``crossent tour --format json --quick`` run (renders every figure once)."""
    folder = tmp_path_factory.mktemp("tour")
    code, stdout, stderr = _run(["tour", "--format", "json", "--quick", "--out", str(folder)])
    return {"code": code, "rows": json.loads(stdout), "stderr": stderr, "dir": folder}


def test_exit_status_and_progress(tour):
    assert tour["code"] == 0
    lines = [ln for ln in tour["stderr"].splitlines() if ln.startswith("[tour ")]
    assert len(lines) >= 3 and "figure 07_clip_training.png" in tour["stderr"]


def test_rows_have_the_required_keys(tour):
    for row in tour["rows"]:
        assert {"article", "quantity", "stated", "computed", "agrees"} <= row.keys()
        assert row["article"] in SEEDS
        assert isinstance(row["computed"], float)
        assert row["agrees"] in (True, False, None)


def test_every_claim_is_checked_here(tour):
    assert sorted(r["id"] for r in tour["rows"]) == sorted(CLAIMS)


@pytest.mark.parametrize("claim_id", sorted(CLAIMS))
def test_computed_matches_independent_value(tour, claim_id):
    row = next(r for r in tour["rows"] if r["id"] == claim_id)
    _, expected, _ = CLAIMS[claim_id]
    assert row["computed"] == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("claim_id", sorted(CLAIMS))
def test_stated_and_verdict(tour, claim_id):
    row = next(r for r in tour["rows"] if r["id"] == claim_id)
    stated, _, holds = CLAIMS[claim_id]
    assert row["stated"] == (None if stated is None else float(stated))
    assert row["agrees"] is holds
    if holds is False:  # a flagged claim shows the exact value and says what is right
        assert row["note"]


def test_reading_table_obeys_the_rounding_rule():
    """Guard the hand-written verdicts: k decimals -> |exact - stated| <= 0.5 * 10**-k."""
    exact_by_nature = {"a003.info.certain", "a003.model1.s2_sum", "a003.model2.s3_sum",
                       "a003.kl_identity", "a004.snippet.identical"}
    for claim_id, (stated, value, holds) in CLAIMS.items():
        if stated is None:
            continue
        k = len(stated.split(".")[1]) if "." in stated else 0
        tol = 1e-12 if claim_id in exact_by_nature else 0.5 * 10 ** -k + 1e-12
        assert (abs(value - float(stated)) <= tol) is holds, claim_id


def test_every_article_with_a_worked_example_contributes(tour):
    stated = {r["article"] for r in tour["rows"] if r["stated"] is not None}
    assert stated == ARTICLES_WITH_EXAMPLES


def test_figures_are_non_empty_pngs(tour):
    for name in FIGURES:
        path = tour["dir"] / name
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
        image = mpimg.imread(path)
        assert image.shape[0] > 150 and image.shape[1] > 300, name
        assert image[..., :3].std() > 0.05, name  # not a blank canvas


def test_margin_figure_is_reported_missing_not_faked(tour):
    html = (tour["dir"] / "index.html").read_text(encoding="utf-8")
    if HAS_MARGIN:
        assert (tour["dir"] / "09_margins.png").exists()
    else:
        assert not (tour["dir"] / "09_margins.png").exists()
        assert "crossent.margin" in html and "missing" in html


def test_report_lays_out_table_and_figures(tour):
    html = (tour["dir"] / "index.html").read_text(encoding="utf-8")
    for name in FIGURES:
        assert f'src="{name}"' in html
    assert html.count('<tr class="wrong">') == sum(r["agrees"] is False for r in tour["rows"])
    assert json.loads((tour["dir"] / "claims.json").read_text(encoding="utf-8")) == tour["rows"]


def test_text_format_says_plainly_what_is_wrong(tmp_path):
    code, stdout, _ = _run(["tour", "--no-plots", "--no-progress", "--out", str(tmp_path)])
    assert code == 0
    start = stdout.rindex("\n", 0, stdout.index("softmax of row 1, P(positive)"))
    block = stdout[start:start + 300]
    assert "WRONG" in block and "0.71" in block and "0.785597" in block
    code, stdout, _ = _run(["tour", "--no-plots", "--no-progress", "--lang", "zh",
                            "--out", str(tmp_path)])
    assert code == 0 and "错误" in stdout and "0.785597" in stdout
    assert 'lang="zh-CN"' in (tmp_path / "index.html").read_text(encoding="utf-8")


def test_margin_plugin_draws_with_a_head(tmp_path):
    """The margin figure's routine works once heads exist (here only the no-margin head)."""
    from crossent.tour import margins

    heads, message = margins.status()
    assert (heads is None) == (not HAS_MARGIN) and message
    path = margins.draw(margins.FIGURE_HEADS[:1], tmp_path, dpi=50, quick=True, steps=20)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_margin_regions_leave_gaps_only_with_a_margin(tmp_path):
    """The figure's outer ring: plain softmax assigns every angle to a class; ArcFace's
    margin leaves angles where no class wins with its margin applied."""
    import numpy as np

    from crossent.tour import margins

    data = margins.digits()
    angles = np.linspace(-np.pi, np.pi, 721)
    plain = margins.train(margins.FIGURE_HEADS[0], steps=60, data=data)
    arc = margins.train(margins.FIGURE_HEADS[3], steps=60, data=data)
    assert (margins.margin_regions(plain, angles) >= 0).all()
    gaps = margins.margin_regions(arc, angles) < 0
    assert 0 < gaps.mean() < 1
    assert 0.3 < arc.accuracy <= 1 and 0.3 < plain.accuracy <= 1
