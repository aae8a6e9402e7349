"""The five source articles the tour checks: seed file name, title, what each covers.

The articles are not read at run time (the tour runs on embedded data, without network or
the seed folder); their worked examples are transcribed in :mod:`crossent.tour.claims`
with a short quotation of each statement.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Article:
    seed: str       # file name under shared/seeds/, the key used in every claim row
    title: str      # the article's own title
    title_en: str   # an English rendering of it
    topics: str     # what it covers (English)
    topics_zh: str  # the same in Chinese


ARTICLES: tuple[Article, ...] = (
    Article(
        "000_28b471f7a140c5f1.txt",
        "介绍交叉熵损失(Cross-Entropy Loss)以及交叉熵在对比学习中的应用:中英双语",
        "Cross-entropy loss and its use in contrastive learning (zh/en) — scraped copy",
        "the same CLIP article as 001, scraped with its formulas flattened to text",
        "与 001 同一篇 CLIP 文章的另一份抓取(公式被压平成文本)",
    ),
    Article(
        "001_2d242eaa971fb9bb.txt",
        "介绍交叉熵损失(Cross-Entropy Loss)以及交叉熵在对比学习中的应用:中英双语",
        "Cross-entropy loss and its use in contrastive learning (zh/en)",
        "-log p examples, softmax, CLIP's 3x3 similarity matrix and its row softmax",
        "-log p 的例子、softmax、CLIP 的 3x3 相似度矩阵及其行 softmax",
    ),
    Article(
        "002_cc02474d667e4482.txt",
        "交叉熵损失函数(Cross-Entropy Loss)",
        "The cross-entropy loss function",
        "binary and multi-class CE examples, CE-vs-MSE gradients, PyTorch "
        "BCEWithLogitsLoss and CrossEntropyLoss snippets",
        "二分类与多分类交叉熵例子、交叉熵与均方误差的梯度对比、PyTorch "
        "BCEWithLogitsLoss 与 CrossEntropyLoss 代码",
    ),
    Article(
        "003_e280ffc7b3025e38.txt",
        "损失函数:交叉熵损失函数",
        "Loss functions: the cross-entropy loss",
        "information content, entropy, KL, the two-model comparison, NumPy functions, "
        "L-/AM-Softmax and ArcFace",
        "信息量、信息熵、相对熵、两个模型的对比、NumPy 实现、L-/AM-Softmax 与 ArcFace",
    ),
    Article(
        "004_2d4ee1df4263fd17.txt",
        "为什么 nn.CrossEntropyLoss = LogSoftmax + nn.NLLLoss?",
        "Why nn.CrossEntropyLoss = LogSoftmax + nn.NLLLoss",
        "the decomposition, a PyTorch snippet, the manual derivation, overflow of exp",
        "分解推导、PyTorch 代码、手算推导、exp 溢出",
    ),
)

BY_SEED: dict[str, Article] = {a.seed: a for a in ARTICLES}
