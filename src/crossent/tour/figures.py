"""The list of the tour's figures: file name, caption (en/zh) and the function that draws it.

:func:`render` draws them in order into the output folder and returns one record per
figure: ``{"file", "title", "caption", "status"}`` where status is ``"ok"``, ``"missing:
..."`` (a figure whose library part does not exist yet) or ``"failed: ..."``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from crossent.tour import clip_demo, margins, plots


@dataclass(frozen=True)
class FigureSpec:
    file: str
    title: str
    title_zh: str
    caption: str
    caption_zh: str
    draw: Callable[[Path, int, bool], Path]
    availability: Callable[[], str] | None = None  # "ok" or "missing: <what>"


def _simple(fn: Callable[[Path, int], Path]) -> Callable[[Path, int, bool], Path]:
    return lambda out, dpi, quick: fn(out, dpi)


def _margins(out: Path, dpi: int, quick: bool) -> Path:
    heads, message = margins.status()
    if heads is None:
        raise RuntimeError(message)
    return margins.draw(heads, out, dpi, quick)


def _margins_availability() -> str:
    return margins.status()[1]


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("01_neg_log.png", "-log p: the loss of one example", "-log p:单个样本的损失",
               "The loss of an example is -ln of the probability given to its true class. The "
               "articles' points are marked, with the CLIP example's stated P = 0.71 next to "
               "the exact 0.786.",
               "单个样本的损失是真实类别概率的 -ln。图中标出文章里的点,并把 CLIP 例子中文章给出的 "
               "P = 0.71 与精确值 0.786 并列。", _simple(plots.neg_log)),
    FigureSpec("02_binary_ce.png", "Binary cross-entropy for y = 1 and y = 0",
               "y = 1 与 y = 0 的二分类交叉熵",
               "-(y ln p + (1 - y) ln(1 - p)) for both labels; article 002's two examples marked.",
               "两种标签下的 -(y ln p + (1 - y) ln(1 - p));标出文章 002 的两个例子。",
               _simple(plots.binary_ce)),
    FigureSpec("03_grad_ce_vs_mse.png", "Gradient of CE versus MSE", "交叉熵与均方误差的梯度",
               "(a) With respect to the probability, as article 002 compares them (10 vs 0.9 at "
               "p = 0.1). (b) With respect to the logit, which is what the network receives: "
               "CE's gradient p - y stays large when the prediction is wrong, while MSE's is "
               "multiplied by p(1 - p) and vanishes as p -> 0. That is why CE learns fast when "
               "wrong.",
               "(a) 对概率求导,即文章 002 的比较(p = 0.1 时 10 对 0.9)。(b) 对 logit 求导,"
               "这才是网络实际收到的梯度:交叉熵的梯度 p - y 在预测错误时仍然很大,而均方误差的"
               "梯度多乘了 p(1 - p),在 p -> 0 时消失。这就是交叉熵在错误时学得快的原因。",
               _simple(plots.grad_ce_vs_mse)),
    FigureSpec("04_softmax_temperature.png", "Softmax under temperature", "带温度的 softmax",
               "softmax(z / T) of the CLIP example's first row: low temperature sharpens toward "
               "the argmax, high temperature flattens toward uniform.",
               "CLIP 例子第一行的 softmax(z / T):温度低时趋向 argmax,温度高时趋向均匀分布。",
               _simple(plots.softmax_temperature)),
    FigureSpec("05_entropy_ce_kl.png", "Entropy, cross-entropy and KL", "熵、交叉熵与 KL 散度",
               "H(p, q) = H(p) + KL(p || q): cross-entropy is the entropy of the truth plus the "
               "extra cost of coding it with the model's q (article 003: KL = cross-entropy - "
               "entropy). H(p, q) and KL are computed separately with crossent; the dashed line "
               "lies exactly on the stack.",
               "H(p, q) = H(p) + KL(p || q):交叉熵等于真实分布的熵加上用模型分布 q 编码的额外"
               "代价(文章 003:KL 散度 = 交叉熵 - 信息熵)。H(p, q) 与 KL 分别用 crossent 计算,"
               "虚线正好落在堆叠面积的上沿。", _simple(plots.entropy_ce_kl)),
    FigureSpec("06_clip_similarity.png", "The CLIP example: similarities and row softmax",
               "CLIP 例子:相似度矩阵与行 softmax",
               "Article 001's 3x3 logits_per_image and its row softmax, positives boxed. The "
               "first row is 0.786 / 0.175 / 0.039, not the article's 0.71 / 0.23 / 0.06.",
               "文章 001 的 3x3 logits_per_image 及其行 softmax,正样本用方框标出。第一行是 "
               "0.786 / 0.175 / 0.039,而不是文中的 0.71 / 0.23 / 0.06。",
               _simple(plots.clip_similarity)),
    FigureSpec("07_clip_training.png", "CLIP's loss at work: gradient steps",
               "CLIP 损失的作用:梯度下降",
               "Gradient descent on CLIP's symmetric loss (crossent.cross_entropy over rows and "
               "columns): the positive pairs' probability rises, the negatives' falls. "
               + clip_demo.CAPTION,
               "对 CLIP 对称损失(按行与按列的 crossent.cross_entropy)做梯度下降:正样本对的概率"
               "上升,负样本的概率下降。嵌入由固定随机种子生成:匹配的图像/文本特征是共享隐向量"
               "加噪声的两个线性视图,并非真实 CLIP 模型的输出。", clip_demo.plot),
    FigureSpec("08_logsumexp_overflow.png", "Naive softmax-then-log versus log-sum-exp",
               "朴素的先 softmax 再取 log 与 log-sum-exp",
               "Article 004's warning made visible: exp overflows (float32 beyond 88.7, float64 "
               "beyond 709.8) and underflows, so softmax-then-log returns NaN or inf, while "
               "crossent's log-sum-exp form stays exact in both precisions.",
               "把文章 004 的提醒画出来:exp 会上溢(float32 超过 88.7,float64 超过 709.8)也会"
               "下溢,先 softmax 再取 log 会得到 NaN 或 inf,而 crossent 的 log-sum-exp 写法在"
               "两种精度下都保持精确。", _simple(plots.logsumexp_overflow)),
    FigureSpec(margins.FILENAME, "Softmax, L-Softmax, AM-Softmax and ArcFace decision margins",
               "Softmax、L-Softmax、AM-Softmax 与 ArcFace 的决策间隔",
               "Article 003's closing section made concrete: a small network embeds scikit-learn's "
               "handwritten digits in 2-D, trained with plain softmax and with each margin head "
               "(crossent.LargeMarginSoftmax, CosFace, ArcFace). Points: held-out embeddings "
               "divided by their norm; lines: class directions; outer ring: where each class "
               "wins even with its margin applied, so the grey gaps are the margins (plain "
               "softmax has none). Titles give the held-out accuracy.",
               "把文章 003 最后一节讲的内容画出来:一个小网络把 scikit-learn 自带的手写数字嵌入到"
               "二维,分别用普通 softmax 和各个间隔损失(crossent.LargeMarginSoftmax、CosFace、"
               "ArcFace)训练。点:测试集嵌入除以其模长;直线:各类别方向;外圈:加上间隔之后"
               "仍然胜出的类别所占的角度,灰色空隙就是间隔(普通 softmax 没有间隔)。标题给出"
               "测试集准确率。", _margins, _margins_availability),
)


def render(out: Path, dpi: int, quick: bool, lang: str = "en",
           on_figure: Callable[[FigureSpec], None] | None = None) -> list[dict]:
    """Draw every figure into ``out``; one record per figure (see module docstring)."""
    zh = lang == "zh"
    records = []
    for spec in FIGURES:
        if on_figure is not None:
            on_figure(spec)
        record = {"file": spec.file, "title": spec.title_zh if zh else spec.title,
                  "caption": spec.caption_zh if zh else spec.caption}
        available = "ok" if spec.availability is None else spec.availability()
        if available != "ok":
            record["status"] = available
            records.append(record)
            continue
        try:
            spec.draw(Path(out), dpi, quick)
        except Exception as exc:  # one broken figure must not hide the others
            record["status"] = f"failed: {type(exc).__name__}: {exc}"
        else:
            record["status"] = "ok"
        records.append(record)
    return records
