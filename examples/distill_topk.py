"""Distil a small teacher into a smaller student: dense teacher, top-k teachers, hard labels.

    python examples/distill_topk.py [--steps 600] [--out examples/figures/distill_topk.png]

Generated data, CPU, about a minute. Inputs ``x ~ N(0, I_32)``; the label of each is drawn
from ``softmax(f(x))`` over ``V = 512`` classes, ``f`` a fixed random two-layer network (so
labels are noisy and the best possible cross-entropy is the data's conditional entropy).
A teacher (``32 -> 256 -> 256`` features and a ``512 x 256`` head) is trained on plenty of
labels; then a student (``32 -> 48`` features, a ``512 x 48`` head) is trained on few
labels (2,000 examples) four ways, all through crossent's fused heads (no logits tensor):

- hard labels alone: ``crossent.linear_cross_entropy``;
- a dense teacher: ``crossent.linear_distillation_loss`` with the teacher's features and head;
- top-k teachers (k = 8 and 64): the teacher's top-k log-probabilities per example, the
  rest of its mass in one tail bucket (as server-side distillation keeps them).

The curves are the held-out cross-entropy against fresh labels, and the held-out
agreement with the generator's most likely class, per step.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import crossent as ce

D_IN = 32


class Net(torch.nn.Module):
    """Features ``x -> h`` (tanh MLP) and a class head ``W`` used through crossent."""

    def __init__(self, widths: list[int], classes: int):
        super().__init__()
        layers, d = [], D_IN
        for w in widths:
            layers += [torch.nn.Linear(d, w), torch.nn.Tanh()]
            d = w
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Parameter(torch.randn(classes, d) * d ** -0.5)

    def logits(self, x):
        return self.features(x) @ self.head.T


def make_data(n_train: int, n_test: int, classes: int, seed: int):
    """Inputs, noisy labels from a fixed random generator, and its most likely classes."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(D_IN, 64, generator=g) / D_IN ** 0.5
    w2 = torch.randn(64, classes, generator=g) * 3.0 / 64 ** 0.5

    def draw(n):
        x = torch.randn(n, D_IN, generator=g)
        z = torch.tanh(x @ w1) @ w2
        return x, torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1), z.argmax(1)

    return draw(n_train), draw(n_test)


def train_teacher(data, classes: int, steps: int, seed: int) -> Net:
    torch.manual_seed(seed)
    net = Net([256, 256], classes)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    x, y, _ = data
    for step in range(steps):
        i = torch.randint(0, x.shape[0], (512,))
        loss = ce.linear_cross_entropy(net.features(x[i]), net.head, y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def evaluate(net: Net, test) -> tuple[float, float]:
    x, y, best = test
    with torch.no_grad():
        z = net.logits(x)
    return ce.cross_entropy(z, y).item(), (z.argmax(1) == best).float().mean().item()


def train_student(method: str, teacher: Net, data, test, classes: int, steps: int, seed: int,
                  every: int):
    torch.manual_seed(seed)
    net = Net([48], classes)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y, _ = data
    with torch.no_grad():
        t_feat = teacher.features(x)
        t_logp = torch.log_softmax(t_feat @ teacher.head.T, 1)
    curve = []
    for step in range(steps + 1):
        if step % every == 0:
            curve.append((step, *evaluate(net, test)))
        if step == steps:
            break
        i = torch.randint(0, x.shape[0], (256,))
        h = net.features(x[i])
        if method == "hard labels":
            loss = ce.linear_cross_entropy(h, net.head, y[i])
        elif method == "dense teacher":
            loss = ce.linear_distillation_loss(h, net.head, y[i], teacher_input=t_feat[i],
                                               teacher_weight=teacher.head, alpha=0.8)
        else:
            k = min(int(method.split("-")[1]), classes)
            lq, idx = t_logp[i].topk(k, 1)
            loss = ce.linear_distillation_loss(h, net.head, y[i], teacher_topk_indices=idx,
                                               teacher_topk_log_probs=lq, alpha=0.8)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return curve


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--teacher-steps", type=int, default=1500)
    p.add_argument("--classes", type=int, default=512)
    p.add_argument("--train", type=int, default=2000, help="labelled examples of the student")
    p.add_argument("--pool", type=int, default=40_000, help="labelled examples of the teacher")
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (the ops are small: more threads mostly wait)")
    p.add_argument("--out", default="examples/figures/distill_topk.png")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    big, test = make_data(a.pool, 4_000, a.classes, a.seed)
    teacher = train_teacher(big, a.classes, a.teacher_steps, a.seed)
    t_ce, t_acc = evaluate(teacher, test)
    small = tuple(t[: a.train] for t in big)
    methods = ["hard labels", "dense teacher", "top-64", "top-8"]
    curves = {m: train_student(m, teacher, small, test, a.classes, a.steps, a.seed, a.every)
              for m in methods}
    print(f"teacher: held-out CE {t_ce:.3f}, agreement with the generator {100 * t_acc:.1f}%")
    for m, c in curves.items():
        best = min(c, key=lambda r: r[1])
        print(f"{m:>14}: final CE {c[-1][1]:.3f} (best {best[1]:.3f} at step {best[0]}), "
              f"agreement {100 * c[-1][2]:.1f}%")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for m, c in curves.items():
        steps, loss, acc = zip(*c)
        axes[0].plot(steps, loss, label=m)
        axes[1].plot(steps, [100 * v for v in acc], label=m)
    axes[0].axhline(t_ce, color="grey", ls=":", label="teacher")
    axes[1].axhline(100 * t_acc, color="grey", ls=":", label="teacher")
    axes[0].set(xlabel="student step", ylabel="held-out cross-entropy (nats)",
                title=f"student on {a.train} labels, V = {a.classes}")
    axes[1].set(xlabel="student step", ylabel="agreement with the generator's argmax (%)")
    axes[0].legend()
    fig.tight_layout()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"figure: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
