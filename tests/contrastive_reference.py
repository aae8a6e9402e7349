"""The contrastive losses written out from their papers, in plain float64 PyTorch.

Each function forms the whole similarity matrix and follows the published formula term
by term (no crossent code). Used by ``test_contrastive.py`` (one device) and
``test_contrastive_distributed.py`` (the global batch in one process).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

D = torch.float64


def clip(image, text, scale, bias=None):
    """Radford et al. 2021: mean of image->text and text->image cross-entropy over
    ``z = scale * I T^T (+ bias)``, pair ``i`` the positive."""
    z = scale * image.to(D) @ text.to(D).T
    if bias is not None:
        z = z + bias
    n = z.shape[0]
    i2t = torch.stack([torch.logsumexp(z[i], 0) - z[i, i] for i in range(n)]).mean()
    t2i = torch.stack([torch.logsumexp(z[:, j], 0) - z[j, j] for j in range(n)]).mean()
    return (i2t + t2i) / 2


def info_nce(query, positive, negatives=None, temperature=0.1, normalize=True):
    """Oord et al. 2018: ``-log( e^{q.k+/t} / sum_k e^{q.k/t} )`` over in-batch and extra keys."""
    q, keys = query.to(D), positive.to(D)
    if negatives is not None:
        keys = torch.cat([keys, negatives.to(D)])
    if normalize:
        q, keys = q / q.norm(dim=1, keepdim=True), keys / keys.norm(dim=1, keepdim=True)
    z = q @ keys.T / temperature
    n = q.shape[0]
    return torch.stack([-(z[i, i] - torch.logsumexp(z[i], 0)) for i in range(n)]).mean()


def nt_xent(z1, z2, temperature=0.5):
    """Chen et al. 2020, eq. (1): ``l(i, j) = -log e^{s_ij/t} / sum_{k != i} e^{s_ik/t}``,
    averaged over all ``2N`` anchors."""
    v = torch.cat([z1, z2]).to(D)
    v = v / v.norm(dim=1, keepdim=True)
    s = v @ v.T / temperature
    n2 = v.shape[0]
    n = n2 // 2
    terms = []
    for i in range(n2):
        j = (i + n) % n2
        others = torch.stack([s[i, k] for k in range(n2) if k != i])
        terms.append(-(s[i, j] - torch.logsumexp(others, 0)))
    return torch.stack(terms).mean()


def supcon(features, labels=None, temperature=0.07, base_temperature=0.07):
    """Khosla et al. 2020, eq. (2) with the reference code's conventions (anchors
    view-major, normalised; ``-(t/bt) mean_p log p``; 0 for anchors without positives)."""
    if features.dim() == 2:
        features = features.unsqueeze(1)
    n, views = features.shape[0], features.shape[1]
    if labels is None:
        labels = torch.arange(n)
    a = torch.cat(torch.unbind(features.to(D), 1))
    a = a / a.norm(dim=1, keepdim=True)
    lab = labels.repeat(views)
    z = a @ a.T / temperature
    total = []
    for i in range(a.shape[0]):
        others = [k for k in range(a.shape[0]) if k != i]
        lse = torch.logsumexp(z[i, others], 0)
        pos = [k for k in others if lab[k] == lab[i]]
        if not pos:
            total.append(z.new_zeros(()))
            continue
        mean_log_prob = torch.stack([z[i, p] - lse for p in pos]).mean()
        total.append(-(temperature / base_temperature) * mean_log_prob)
    return torch.stack(total).mean()


def siglip(image, text, scale, bias):
    """Zhai et al. 2023, Algorithm 1: ``-sum_ij log sigmoid(y_ij z_ij) / n``."""
    z = scale * image.to(D) @ text.to(D).T + bias
    n = z.shape[0]
    y = 2 * torch.eye(n, dtype=D, device=z.device) - 1
    return -F.logsigmoid(y * z).sum() / n


def open_clip_loss_module():
    """open_clip's own ``loss.py`` (None when not installed); loaded by path, see
    :func:`crossent.bench.suites.contrastive.open_clip_loss_module` for why."""
    from crossent.bench.suites.contrastive import open_clip_loss_module as load

    return load()
