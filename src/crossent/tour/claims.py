"""Every numeric worked example of the five source articles, as data, recomputed with crossent.

Each :class:`~crossent.tour.check.Claim` holds the number as the article writes it, a
short quotation, and a function that recomputes the quantity in float64 with crossent's
own losses (``crossent.softmax``, ``log_softmax``, ``nll_loss``, ``cross_entropy``,
``binary_cross_entropy[_with_logits]``, ``kl_div``, the ``nn`` modules) or, for the
information-theory definitions, ``crossent.reference``. Whether a statement holds is
decided by the precision rule of :mod:`crossent.tour.check`: a figure written with ``k``
decimals must be the exact value correctly rounded to ``k`` decimals.

Claims whose article gives no number (``stated=None``) are the values a reader would want
next to a worked example the article leaves unfinished (e.g. what its NumPy code returns).
The order of :data:`CLAIMS` is the order of the articles and, within each, of the text.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch

import crossent as ce
from crossent import reference as ref
from crossent.tour.check import Claim

F64 = torch.float64

# ---- the inputs, exactly as the articles write them --------------------------------------

#: 001/000: CLIP's logits_per_image for a batch of 3 (row i = image i, column j = text j).
CLIP_LOGITS = [[2.0, 0.5, -1.0], [0.3, 1.8, 0.2], [-0.5, 0.4, 1.5]]
#: 002: the BCEWithLogitsLoss snippet.
BCE_SNIPPET_LOGITS = [[2.0], [0.5], [-1.0]]
BCE_SNIPPET_LABELS = [[1.0], [1.0], [0.0]]
#: 002: the CrossEntropyLoss snippet.
CE_SNIPPET_LOGITS = [[3.0, 1.0, 0.2], [0.5, 2.0, 0.3]]
CE_SNIPPET_LABELS = [0, 1]
#: 003: the two-model comparison (predictions as printed; labels one-hot -> index).
MODEL1_PRED = [[0.3, 0.3, 0.4], [0.3, 0.4, 0.4], [0.1, 0.2, 0.7]]
MODEL2_PRED = [[0.1, 0.2, 0.7], [0.1, 0.7, 0.2], [0.3, 0.4, 0.4]]
MODELS_LABELS = [2, 1, 0]
#: 003: the NumPy functions' example inputs.
NP_BINARY_TRUE = [[0.0], [1.0], [1.0], [0.0]]
NP_BINARY_PRED = [[0.1], [0.9], [0.8], [0.4]]
NP_CAT_TRUE = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
NP_CAT_PRED = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]
#: 004: the CrossEntropyLoss vs LogSoftmax + NLLLoss snippet, and its manual derivation.
NLL_SNIPPET_LOGITS = [[1.0, 2.0, 0.5], [0.1, 0.5, 2.0]]
NLL_SNIPPET_TARGET = [1, 2]
#: 004: "p = [0, 1, 0]" (true, one-hot) and "q = [0.2, 0.5, 0.3]" (predicted).
ONE_HOT_P = [0.0, 1.0, 0.0]
PRED_Q = [0.2, 0.5, 0.3]
#: Distributions used to instantiate 003's "KL = cross-entropy - entropy" (our choice).
KL_P = [0.6, 0.3, 0.1]
KL_Q = [0.2, 0.5, 0.3]
#: Large logits for 004's overflow remark (exp(1000) is inf in float64).
HUGE_LOGITS = [[1000.0, 999.0, 998.0]]


def _t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=F64)


def _idx(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.long)


# ---- recomputations ------------------------------------------------------------------------

def neg_log(p: float) -> float:
    """``-log p``: the cross-entropy loss when the true class gets probability ``p``.

    Computed as crossent's binary cross-entropy with label 1, ``-(1 log p + 0 log(1-p))``.
    """
    return ce.binary_cross_entropy(_t([p]), _t([1.0])).item()


def self_information(p: float) -> float:
    """``I = -log p`` (nats) from ``crossent.reference``."""
    return float(ref.self_information(p))


def clip_softmax(i: int, j: int) -> float:
    """Row softmax of the CLIP similarity matrix: ``P(text j | image i)``."""
    return ce.softmax(_t(CLIP_LOGITS), dim=1)[i, j].item()


def clip_row_loss(i: int) -> float:
    """Image ``i``'s loss ``-log softmax(row i)[i]`` (target = the diagonal)."""
    return ce.cross_entropy(_t(CLIP_LOGITS), _idx([0, 1, 2]), reduction="none")[i].item()


def clip_loss(direction: str) -> float:
    """CLIP's loss: image->text = CE(S, diag), text->image = CE(S^T, diag), symmetric = mean.

    The article gives the similarities ``S`` themselves; as features, image ``i`` is row
    ``S_i`` and text ``j`` the unit vector ``e_j`` (so ``<S_i, e_j> = S_ij``), and
    ``crossent.clip_loss`` / ``crossent.info_nce`` compute the losses from them.
    """
    s = _t(CLIP_LOGITS)
    e = torch.eye(s.shape[0], dtype=s.dtype)
    if direction == "sym":
        return ce.clip_loss(s, e, 1.0).item()
    rows = s if direction == "i2t" else s.T
    return ce.info_nce(rows, e, temperature=1.0, normalize=False).item()


def grad_wrt_prob(loss: str, p: float = 0.1, y: float = 1.0) -> float:
    """``dL/d y_hat`` at ``y_hat = p``: CE ``-y/y_hat`` (crossent BCE) or MSE ``-(y - y_hat)``.

    The MSE is ``(y - y_hat)^2 / 2``, the convention whose derivative the article writes.
    """
    yhat = _t(p).requires_grad_(True)
    if loss == "ce":
        value = ce.binary_cross_entropy(yhat.reshape(1), _t([y]))
    else:
        value = 0.5 * (y - yhat) ** 2
    value.backward()
    return yhat.grad.item()


def grad_wrt_logit(loss: str, p: float = 0.1, y: float = 1.0) -> float:
    """``dL/dz`` where ``y_hat = sigmoid(z) = p``: CE gives ``p - y``, MSE ``(p - y) p (1 - p)``."""
    z = _t(math.log(p / (1.0 - p))).requires_grad_(True)
    if loss == "ce":
        value = ce.binary_cross_entropy_with_logits(z.reshape(1), _t([y]))
    else:
        value = 0.5 * (y - torch.sigmoid(z)) ** 2
    value.backward()
    return z.grad.item()


def bce_snippet() -> float:
    """002's ``nn.BCEWithLogitsLoss()(logits, labels)`` with crossent's module."""
    return ce.BCEWithLogitsLoss()(_t(BCE_SNIPPET_LOGITS), _t(BCE_SNIPPET_LABELS)).item()


def ce_snippet() -> float:
    """002's ``nn.CrossEntropyLoss()(logits, labels)`` with crossent's module."""
    return ce.CrossEntropyLoss()(_t(CE_SNIPPET_LOGITS), _idx(CE_SNIPPET_LABELS)).item()


def model_loss(pred: list, sample: int | None) -> float:
    """003's per-sample ``-sum_c y_c log y_hat_c`` (NLL of log-probabilities) or its mean."""
    logp = torch.log(_t(pred))
    if sample is None:
        return ce.nll_loss(logp, _idx(MODELS_LABELS)).item()
    return ce.nll_loss(logp, _idx(MODELS_LABELS), reduction="none")[sample].item()


def row_sum(pred: list, sample: int) -> float:
    """Sum of a printed prediction row (a probability distribution must sum to 1)."""
    return float(np.sum(np.asarray(pred[sample], dtype=np.float64)))


def numpy_binary() -> float:
    """003's ``binary_cross_entropy_loss`` example, with crossent's mean BCE."""
    return ce.binary_cross_entropy(_t(NP_BINARY_PRED), _t(NP_BINARY_TRUE)).item()


def numpy_categorical() -> float:
    """003's ``categorical_cross_entropy_loss`` example: mean NLL of log-probabilities."""
    target = _idx(np.argmax(np.asarray(NP_CAT_TRUE), axis=1).tolist())
    return ce.nll_loss(torch.log(_t(NP_CAT_PRED)), target).item()


def article_numpy_binary() -> float:
    """003's own NumPy function, verbatim, on its own example (for the note)."""
    y_true, y_pred = np.array(NP_BINARY_TRUE), np.array(NP_BINARY_PRED)
    return float(-np.mean(y_true * np.log(y_pred) + (1 - y_true) * np.log(1 - y_pred)))


def article_numpy_categorical() -> float:
    """003's own NumPy function, verbatim (including its ``+ 1e-9``), on its own example."""
    y_true, y_pred = np.array(NP_CAT_TRUE), np.array(NP_CAT_PRED)
    return float(-np.mean(np.sum(y_true * np.log(y_pred + 1e-9), axis=1)))


def kl_identity_gap() -> float:
    """``H(p, q) - H(p) - KL(p||q)`` for 003's "KL = cross-entropy - entropy" (should be 0).

    ``H(p, q)`` is crossent's cross_entropy with probability targets on logits ``log q``
    (softmax(log q) = q), ``KL`` is crossent's kl_div(log q, p, 'sum'), ``H(p)`` the reference.
    """
    p, q = _t([KL_P]), _t([KL_Q])
    h_pq = ce.cross_entropy(torch.log(q), p, reduction="sum")
    kl = ce.kl_div(torch.log(q), p, reduction="sum")
    return (h_pq - float(ref.entropy(KL_P)) - kl).item()


def one_hot_cross_entropy() -> float:
    """004's ``H(p, q)`` for ``p = [0, 1, 0]``, ``q = [0.2, 0.5, 0.3]`` (= -log 0.5)."""
    return float(ref.cross_entropy(ONE_HOT_P, PRED_Q))


def nll_snippet() -> float:
    """004's snippet: ``nn.CrossEntropyLoss()(logits, target)`` with crossent."""
    return ce.CrossEntropyLoss()(_t(NLL_SNIPPET_LOGITS), _idx(NLL_SNIPPET_TARGET)).item()


def nll_snippet_gap() -> float:
    """004's snippet: ``|CrossEntropyLoss - NLLLoss(LogSoftmax)|`` with crossent (should be 0)."""
    logits, target = _t(NLL_SNIPPET_LOGITS), _idx(NLL_SNIPPET_TARGET)
    direct = ce.CrossEntropyLoss()(logits, target)
    two_step = ce.NLLLoss()(ce.log_softmax(logits, dim=1), target)
    return abs((direct - two_step).item())


def manual(step: str, j: int = 0) -> float:
    """004's manual derivation for logits ``[1.0, 2.0, 0.5]``, target 1."""
    z = _t(NLL_SNIPPET_LOGITS[:1])
    target = _idx([1])
    if step == "softmax":
        return ce.softmax(z, dim=1)[0, j].item()
    if step == "log_softmax":
        return ce.log_softmax(z, dim=1)[0, j].item()
    if step == "nll":
        return ce.nll_loss(ce.log_softmax(z, dim=1), target).item()
    return ce.cross_entropy(z, target).item()


def huge_logits_loss() -> float:
    """CE of logits ``[1000, 999, 998]``, target 0: exact ``log(1 + e^-1 + e^-2)``."""
    return ce.cross_entropy(_t(HUGE_LOGITS), _idx([0])).item()


# ---- the claims -----------------------------------------------------------------------------

A000, A001 = "000_28b471f7a140c5f1.txt", "001_2d242eaa971fb9bb.txt"
A002, A003, A004 = ("002_cc02474d667e4482.txt", "003_e280ffc7b3025e38.txt",
                    "004_2d4ee1df4263fd17.txt")

_P_WRONG = ("exp(2.0) / (exp(2.0) + exp(0.5) + exp(-1.0)) = 7.389 / 9.406 = 0.7856. "
            "The article's row 0.71 / 0.23 / 0.06 adds up to 1 but is not the softmax of "
            "[2.0, 0.5, -1.0]; the right row is 0.786 / 0.175 / 0.039.")
_P_WRONG_ZH = ("exp(2.0) / (exp(2.0) + exp(0.5) + exp(-1.0)) = 7.389 / 9.406 = 0.7856。"
               "文中的 0.71 / 0.23 / 0.06 虽然加起来等于 1,却不是 [2.0, 0.5, -1.0] 的 "
               "softmax;正确的一行是 0.786 / 0.175 / 0.039。")


def _clip_claims(seed: str, flattened: bool) -> list[Claim]:
    """The CLIP article's claims (000 is a scrape of 001 with '=' and '+' lost)."""
    pre = "a000" if flattened else "a001"
    q = (lambda flat, clean: flat if flattened else clean)  # noqa: E731
    claims = [
        Claim(f"{pre}.neglog_0.1", seed, "-log(0.1): loss when the true class has p = 0.1",
              "-log(0.1):真实类别概率为 0.1 时的损失", "2.3",
              q("若 ( y^j 0.1 )损失 ( − log (0.1) 2.3 )", "若 ŷ_j = 0.1,损失 −log(0.1) = 2.3"),
              partial(neg_log, 0.1)),
        Claim(f"{pre}.neglog_0.9", seed, "-log(0.9): loss when the true class has p = 0.9",
              "-log(0.9):真实类别概率为 0.9 时的损失", "0.11",
              q("若 ( y^j 0.9 )损失 ( − log (0.9) 0.11 )", "若 ŷ_j = 0.9,损失 −log(0.9) = 0.11"),
              partial(neg_log, 0.9)),
        Claim(f"{pre}.clip.row1.p_pos", seed,
              "CLIP 3x3 example: softmax of row 1, P(positive) = P(text 1 | image 1)",
              "CLIP 3x3 例子:第一行 softmax 的正样本概率 P(positive)", "0.71",
              q("P(positive) exp(2.0) exp(2.0) exp(0.5) exp(−1.0) ... ≈0.71",
                "P(positive) = exp(2.0)/(exp(2.0)+exp(0.5)+exp(−1.0)) ≈ 0.71"),
              partial(clip_softmax, 0, 0), _P_WRONG, _P_WRONG_ZH),
        Claim(f"{pre}.clip.row1.p_neg2", seed, "CLIP 3x3 example: row 1, P(negative, j=2)",
              "CLIP 3x3 例子:第一行 P(negative, j=2)", "0.23",
              "P(negative, j=2) ≈ 0.23", partial(clip_softmax, 0, 1),
              "exp(0.5) / 9.406 = 0.1753, not 0.23.", "exp(0.5) / 9.406 = 0.1753,而不是 0.23。"),
        Claim(f"{pre}.clip.row1.p_neg3", seed, "CLIP 3x3 example: row 1, P(negative, j=3)",
              "CLIP 3x3 例子:第一行 P(negative, j=3)", "0.06",
              "P(negative, j=3) ≈ 0.06", partial(clip_softmax, 0, 2),
              "exp(-1.0) / 9.406 = 0.0391, not 0.06.", "exp(-1.0) / 9.406 = 0.0391,而不是 0.06。"),
        Claim(f"{pre}.neglog_0.71", seed, "-log(0.71) (arithmetic on the stated probability)",
              "-log(0.71)(按文中给出的概率计算)", "0.34",
              q("− log (0.71) 0.34", "−log(0.71) = 0.34"), partial(neg_log, 0.71)),
        Claim(f"{pre}.clip.row1.loss", seed,
              "CLIP 3x3 example: image 1's loss -log P(positive)",
              "CLIP 3x3 例子:图像 1 的损失 -log P(positive)", "0.34",
              q("L − log (P(positive)) ≈ − log (0.71) 0.34",
                "L = −log(P(positive)) ≈ −log(0.71) = 0.34"),
              partial(clip_row_loss, 0),
              "The step -log(0.71) = 0.34 is right, but it starts from the wrong probability: "
              "the loss of row 1 is -log(0.7856) = 0.2413.",
              "-log(0.71) = 0.34 这一步本身没错,但用错了概率:第一行的损失是 "
              "-log(0.7856) = 0.2413。"),
    ]
    if not flattened:  # the rest of the example, which the article leaves uncomputed
        claims += [
            Claim("a001.clip.row2.p_pos", seed, "CLIP 3x3 example: row 2, P(text 2 | image 2)",
                  "CLIP 3x3 例子:第二行正样本概率", None, "(not computed in the article)",
                  partial(clip_softmax, 1, 1)),
            Claim("a001.clip.row3.p_pos", seed, "CLIP 3x3 example: row 3, P(text 3 | image 3)",
                  "CLIP 3x3 例子:第三行正样本概率", None, "(not computed in the article)",
                  partial(clip_softmax, 2, 2)),
            Claim("a001.clip.loss_i2t", seed, "CLIP 3x3 example: image->text loss (mean of rows)",
                  "CLIP 3x3 例子:图像到文本的损失(各行平均)", None,
                  "(not computed in the article)", partial(clip_loss, "i2t")),
            Claim("a001.clip.loss_t2i", seed,
                  "CLIP 3x3 example: text->image loss (mean over columns)",
                  "CLIP 3x3 例子:文本到图像的损失(各列平均)", None,
                  "(not computed in the article)", partial(clip_loss, "t2i")),
            Claim("a001.clip.loss_sym", seed,
                  "CLIP 3x3 example: symmetric CLIP loss (i2t + t2i) / 2",
                  "CLIP 3x3 例子:对称 CLIP 损失 (i2t + t2i) / 2", None,
                  "(not computed in the article)", partial(clip_loss, "sym")),
        ]
    return claims


_TRUNC = ("-ln {p} = {v:.4f}, which rounds to {r}; the article's {s} is truncated, not rounded.")
_TRUNC_ZH = "-ln {p} = {v:.4f},四舍五入应为 {r};文中的 {s} 是截断而非四舍五入。"
_SUM_NOTE = ("The printed row 0.3 + 0.4 + 0.4 = 1.1 is not a probability distribution "
             "(0.3 0.4 0.3 was probably meant). The loss only reads the true-class entry, so "
             "the per-sample loss is not affected.")
_SUM_NOTE_ZH = ("表中这一行 0.3 + 0.4 + 0.4 = 1.1,不是概率分布(原意大概是 0.3 0.4 0.3)。"
                "损失只取真实类别那一项,所以该样本的损失不受影响。")


def _trunc(p: float, stated: str) -> tuple[str, str]:
    v = -math.log(p)
    r = f"{v:.{len(stated.split('.')[1])}f}"
    return (_TRUNC.format(p=p, v=v, r=r, s=stated), _TRUNC_ZH.format(p=p, v=v, r=r, s=stated))


def _claims_002() -> list[Claim]:
    s = A002
    return [
        Claim("a002.binary.y1_p0.9", s, "binary CE, y = 1, y_hat = 0.9",
              "二分类交叉熵,y = 1,ŷ = 0.9", "0.105",
              "L=−1⋅log(0.9)−0⋅log(0.1)≈0.105", partial(neg_log, 0.9)),
        Claim("a002.binary.y1_p0.1", s, "binary CE, y = 1, y_hat = 0.1",
              "二分类交叉熵,y = 1,ŷ = 0.1", "2.303", "L=−1⋅log(0.1)≈2.303",
              partial(neg_log, 0.1)),
        Claim("a002.multi.good", s, "3-class CE, y = [1,0,0], y_hat = [0.8,0.1,0.1]",
              "三分类交叉熵,y = [1,0,0],ŷ = [0.8,0.1,0.1]", "0.223",
              "L=−1⋅log(0.8)−0⋅log(0.1)−0⋅log(0.1)≈0.223", partial(neg_log, 0.8)),
        Claim("a002.multi.bad", s, "3-class CE, y = [1,0,0], y_hat = [0.1,0.8,0.1]",
              "三分类交叉熵,y = [1,0,0],ŷ = [0.1,0.8,0.1]", "2.303",
              "L=−1⋅log(0.1)≈2.303", partial(neg_log, 0.1)),
        Claim("a002.grad.mse_prob", s, "MSE gradient dL/d y_hat at y_hat = 0.1, y = 1 "
              "(L = (y - y_hat)^2 / 2)", "均方误差对 ŷ 的梯度,ŷ = 0.1,y = 1", "-0.9",
              "用平方损失时,当 y^=0.1 而 y=1,梯度为 −(y−y^)=−0.9", partial(grad_wrt_prob, "mse")),
        Claim("a002.grad.ce_prob", s, "CE gradient dL/d y_hat = -y / y_hat at y_hat = 0.1, y = 1",
              "交叉熵对 ŷ 的梯度 -y/ŷ,ŷ = 0.1,y = 1", "-10",
              "用交叉熵时,梯度为 −y^y=−0.11=−10  [read: −y/ŷ = −1/0.1 = −10]",
              partial(grad_wrt_prob, "ce")),
        Claim("a002.grad.ce_logit", s,
              "CE gradient w.r.t. the logit z (y_hat = sigmoid(z) = 0.1)",
              "交叉熵对 logit z 的梯度(ŷ = sigmoid(z) = 0.1)", None,
              "(not in the article: the gradient that reaches the network)",
              partial(grad_wrt_logit, "ce")),
        Claim("a002.grad.mse_logit", s,
              "MSE gradient w.r.t. the logit z (y_hat = sigmoid(z) = 0.1)",
              "均方误差对 logit z 的梯度(ŷ = sigmoid(z) = 0.1)", None,
              "(not in the article: the gradient that reaches the network)",
              partial(grad_wrt_logit, "mse")),
        Claim("a002.snippet.bce_with_logits", s,
              "BCEWithLogitsLoss, logits [2.0, 0.5, -1.0], labels [1, 1, 0]",
              "BCEWithLogitsLoss,logits [2.0, 0.5, -1.0],标签 [1, 1, 0]", "0.412",
              "print(loss.item())  # 输出损失值(约0.412)", bce_snippet,
              "The snippet prints 0.3048: the mean of softplus(-2.0) = 0.1269, softplus(-0.5) = "
              "0.4741 and softplus(-1.0) = 0.3133 (label 0 at logit -1). 0.412 is not its output.",
              "这段代码输出 0.3048:softplus(-2.0) = 0.1269、softplus(-0.5) = 0.4741 与 "
              "softplus(-1.0) = 0.3133(logit -1、标签 0)的平均。0.412 不是它的输出。"),
        Claim("a002.snippet.cross_entropy", s,
              "CrossEntropyLoss, logits [[3.0,1.0,0.2],[0.5,2.0,0.3]], labels [0, 1]",
              "CrossEntropyLoss,logits [[3.0,1.0,0.2],[0.5,2.0,0.3]],标签 [0, 1]", "0.326",
              "print(loss.item())  # 输出损失值(约0.326)", ce_snippet,
              "The snippet prints 0.2599 = (0.1791 + 0.3406) / 2, the mean of the two rows' "
              "-log softmax at the label. 0.326 is not its output.",
              "这段代码输出 0.2599 = (0.1791 + 0.3406) / 2,即两行在标签处 -log softmax 的"
              "平均。0.326 不是它的输出。"),
    ]


def _claims_003() -> list[Claim]:
    s = A003
    n04, n04z = _trunc(0.4, "0.91")
    n07, n07z = _trunc(0.7, "0.35")
    return [
        Claim("a003.info.certain", s, "information content of a certain event (p = 1)",
              "必然事件(p = 1)的信息量", "0", "太阳从东边升起这个信息量就是0",
              partial(self_information, 1.0), exact=True),
        Claim("a003.model1.s1", s, "model 1, sample 1: -log 0.4 (true class 3)",
              "模型 1,样本 1:-log 0.4(真实类别 3)", "0.91",
              "sample 1 loss -(0 * log(0.3) 0 * log(0.3) 1 * log(0.4)) 0.91",
              partial(model_loss, MODEL1_PRED, 0), n04, n04z),
        Claim("a003.model1.s2", s, "model 1, sample 2: -log 0.4 (true class 2)",
              "模型 1,样本 2:-log 0.4(真实类别 2)", "0.91",
              "sample 1 loss -(0 * log(0.3) 1 * log(0.4) 0 * log(0.4)) 0.91",
              partial(model_loss, MODEL1_PRED, 1), n04, n04z),
        Claim("a003.model1.s2_sum", s, "model 1, sample 2: predicted probabilities sum to 1",
              "模型 1,样本 2:预测概率之和为 1", "1",
              "0.3 0.4 0.4 | 0 1 0 | 狗正确", partial(row_sum, MODEL1_PRED, 1),
              _SUM_NOTE, _SUM_NOTE_ZH, exact=True),
        Claim("a003.model1.s3", s, "model 1, sample 3: -log 0.1 (true class 1)",
              "模型 1,样本 3:-log 0.1(真实类别 1)", "2.30",
              "sample 1 loss -(1 * log(0.1) 0 * log(0.2) 0 * log(0.7)) 2.30",
              partial(model_loss, MODEL1_PRED, 2)),
        Claim("a003.model1.mean", s, "model 1: mean loss over the 3 samples",
              "模型 1:3 个样本的平均损失", "1.37", "可以看到0.63 比 1.37 的损失值小很多",
              partial(model_loss, MODEL1_PRED, None),
              "(0.9163 + 0.9163 + 2.3026) / 3 = 1.3784, which rounds to 1.38; 1.37 is the "
              "mean of the truncated 0.91, 0.91, 2.30.",
              "(0.9163 + 0.9163 + 2.3026) / 3 = 1.3784,应为 1.38;1.37 是对截断后的 "
              "0.91、0.91、2.30 求的平均。"),
        Claim("a003.model2.s1", s, "model 2, sample 1: -log 0.7 (true class 3)",
              "模型 2,样本 1:-log 0.7(真实类别 3)", "0.35",
              "sample 1 loss -(0 * log(0.1) 0 * log(0.2) 1 * log(0.7)) 0.35",
              partial(model_loss, MODEL2_PRED, 0), n07, n07z),
        Claim("a003.model2.s2", s, "model 2, sample 2: -log 0.7 (true class 2)",
              "模型 2,样本 2:-log 0.7(真实类别 2)", "0.35",
              "sample 1 loss -(0 * log(0.1) 1 * log(0.7) 0 * log(0.2)) 0.35",
              partial(model_loss, MODEL2_PRED, 1), n07, n07z),
        Claim("a003.model2.s3", s, "model 2, sample 3: -log 0.3 (true class 1)",
              "模型 2,样本 3:-log 0.3(真实类别 1)", "1.20",
              "sample 1 loss -(1 * log(0.3) 0 * log(0.4) 0 * log(0.4)) 1.20",
              partial(model_loss, MODEL2_PRED, 2)),
        Claim("a003.model2.s3_sum", s, "model 2, sample 3: predicted probabilities sum to 1",
              "模型 2,样本 3:预测概率之和为 1", "1",
              "0.3 0.4 0.4 | 1 0 0 | 猫错误", partial(row_sum, MODEL2_PRED, 2),
              _SUM_NOTE, _SUM_NOTE_ZH, exact=True),
        Claim("a003.model2.mean", s, "model 2: mean loss over the 3 samples",
              "模型 2:3 个样本的平均损失", "0.63", "可以看到0.63 比 1.37 的损失值小很多",
              partial(model_loss, MODEL2_PRED, None),
              "(0.3567 + 0.3567 + 1.2040) / 3 = 0.6391, which rounds to 0.64; 0.63 is the "
              "mean of the truncated 0.35, 0.35, 1.20.",
              "(0.3567 + 0.3567 + 1.2040) / 3 = 0.6391,应为 0.64;0.63 是对截断后的 "
              "0.35、0.35、1.20 求的平均。"),
        Claim("a003.kl_identity", s,
              "H(p,q) - H(p) - KL(p||q) for p = [0.6,0.3,0.1], q = [0.2,0.5,0.3]",
              "H(p,q) - H(p) - KL(p||q),p = [0.6,0.3,0.1],q = [0.2,0.5,0.3]", "0",
              "KL散度=交叉熵-信息熵", kl_identity_gap, exact=True),
        Claim("a003.numpy.binary", s,
              "NumPy binary_cross_entropy_loss on its example (y_pred [0.1,0.9,0.8,0.4])",
              "NumPy binary_cross_entropy_loss 的示例(y_pred [0.1,0.9,0.8,0.4])", None,
              "print('Binary Cross-Entropy Loss:', loss_binary)  (output not shown)",
              numpy_binary),
        Claim("a003.numpy.categorical", s,
              "NumPy categorical_cross_entropy_loss on its example (3 samples, 3 classes)",
              "NumPy categorical_cross_entropy_loss 的示例(3 个样本,3 类)", None,
              "print('Categorical Cross-Entropy Loss:', loss_categorical)  (output not shown)",
              numpy_categorical),
    ]


def _claims_004() -> list[Claim]:
    s = A004
    ls_note = ("logsumexp(1.0, 2.0, 0.5) = 2.4644, so LogSoftmax = [-1.4644, -0.4644, -1.9644] "
               "-> [-1.46, -0.46, -1.96]. The article's three values are all 0.0056 too low, as "
               "if the log-sum-exp had been rounded to 2.47.")
    ls_note_zh = ("logsumexp(1.0, 2.0, 0.5) = 2.4644,所以 LogSoftmax = [-1.4644, -0.4644, "
                  "-1.9644],即 [-1.46, -0.46, -1.96]。文中三个值都低了 0.0056,"
                  "像是把 log-sum-exp 先取成了 2.47。")
    loss_note = ("-log softmax([1.0, 2.0, 0.5])[1] = 0.4644, which rounds to 0.46, not 0.47.")
    loss_note_zh = "-log softmax([1.0, 2.0, 0.5])[1] = 0.4644,应为 0.46 而不是 0.47。"
    return [
        Claim("a004.one_hot_example", s, "H(p, q) for p = [0,1,0], q = [0.2,0.5,0.3]",
              "H(p, q),p = [0,1,0],q = [0.2,0.5,0.3]", None,
              "p 真实分布 [0, 1, 0];q 预测分布 [0.2, 0.5, 0.3]  (loss not computed)",
              one_hot_cross_entropy),
        Claim("a004.snippet.loss", s,
              "CrossEntropyLoss, logits [[1,2,0.5],[0.1,0.5,2]], target [1, 2]",
              "CrossEntropyLoss,logits [[1,2,0.5],[0.1,0.5,2]],目标 [1, 2]", "0.75",
              "运行结果两个输出的值完全相同比如 0.75", nll_snippet,
              "Both lines print 0.3906 = (0.4644 + 0.3168) / 2; 0.75 is not what this code "
              "outputs (the article offers it as 'e.g.', but the inputs are fixed).",
              "两行都输出 0.3906 = (0.4644 + 0.3168) / 2;0.75 不是这段代码的输出"
              "(文中说“比如”,但输入是固定的)。"),
        Claim("a004.snippet.identical", s,
              "|CrossEntropyLoss - NLLLoss(LogSoftmax)| on the snippet's inputs",
              "同一输入下 |CrossEntropyLoss - NLLLoss(LogSoftmax)|", "0",
              "两个输出的值完全相同", nll_snippet_gap, exact=True),
        Claim("a004.manual.softmax0", s, "manual: softmax([1.0, 2.0, 0.5])[0]",
              "手算:softmax([1.0, 2.0, 0.5])[0]", "0.23", "Softmax:[0.23, 0.63, 0.14]",
              partial(manual, "softmax", 0)),
        Claim("a004.manual.softmax1", s, "manual: softmax([1.0, 2.0, 0.5])[1]",
              "手算:softmax([1.0, 2.0, 0.5])[1]", "0.63", "Softmax:[0.23, 0.63, 0.14]",
              partial(manual, "softmax", 1)),
        Claim("a004.manual.softmax2", s, "manual: softmax([1.0, 2.0, 0.5])[2]",
              "手算:softmax([1.0, 2.0, 0.5])[2]", "0.14", "Softmax:[0.23, 0.63, 0.14]",
              partial(manual, "softmax", 2)),
        Claim("a004.manual.log_softmax0", s, "manual: LogSoftmax([1.0, 2.0, 0.5])[0]",
              "手算:LogSoftmax([1.0, 2.0, 0.5])[0]", "-1.47", "LogSoftmax:[-1.47, -0.47, -1.97]",
              partial(manual, "log_softmax", 0), ls_note, ls_note_zh),
        Claim("a004.manual.log_softmax1", s, "manual: LogSoftmax([1.0, 2.0, 0.5])[1]",
              "手算:LogSoftmax([1.0, 2.0, 0.5])[1]", "-0.47", "LogSoftmax:[-1.47, -0.47, -1.97]",
              partial(manual, "log_softmax", 1), ls_note, ls_note_zh),
        Claim("a004.manual.log_softmax2", s, "manual: LogSoftmax([1.0, 2.0, 0.5])[2]",
              "手算:LogSoftmax([1.0, 2.0, 0.5])[2]", "-1.97", "LogSoftmax:[-1.47, -0.47, -1.97]",
              partial(manual, "log_softmax", 2), ls_note, ls_note_zh),
        Claim("a004.manual.nll", s, "manual: NLL = -LogSoftmax[target 1]",
              "手算:NLL = -LogSoftmax[目标 1]", "0.47", "NLL:-(-0.47) = 0.47",
              partial(manual, "nll"), loss_note, loss_note_zh),
        Claim("a004.manual.cross_entropy", s, "manual: CrossEntropyLoss([1.0, 2.0, 0.5], 1)",
              "手算:CrossEntropyLoss([1.0, 2.0, 0.5], 1)", "0.47",
              "直接用 nn.CrossEntropyLoss,结果一样", partial(manual, "ce"),
              loss_note, loss_note_zh),
        Claim("a004.overflow", s, "CE of logits [1000, 999, 998], target 0 (exp(1000) overflows)",
              "logits [1000, 999, 998]、目标 0 的交叉熵(exp(1000) 会溢出)", None,
              "单独计算 Softmax,指数运算可能导致溢出(比如 e^1000)", huge_logits_loss),
    ]


CLAIMS: list[Claim] = (
    _clip_claims(A000, flattened=True)
    + _clip_claims(A001, flattened=False)
    + _claims_002()
    + _claims_003()
    + _claims_004()
)
