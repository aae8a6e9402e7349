"""Contrastive losses: InfoNCE, CLIP, NT-Xent (SimCLR), SupCon and SigLIP, in tiles.

Each loss is a cross-entropy (or, for SigLIP, a sum of binary cross-entropies) whose
classes are the columns of a similarity matrix ``z = scale * a b^T (+ bias)``. The
matrix is never formed: :mod:`crossent.kernels.similarity` walks it in tiles that fit a
memory budget and returns per-row (and per-column) statistics — ``logsumexp`` or the sum
of ``softplus``, and the target score — from which each loss below is a line of
arithmetic. The backward recomputes the tiles from the saved features and statistics,
so memory grows as ``batch x tile``, not ``batch^2``. Values and gradients are those of
the published formulas (tests compare against them written out in float64, and
against open_clip).

Across ranks (``group=`` a ``torch.distributed`` process group) every rank passes its
local batch; the value returned on every rank is the loss of the *global* batch, and
after DDP averages the gradients of replicated parameters they equal those of one
process holding the global batch (see :mod:`crossent.contrastive.sharded` for the two
designs, ``design='gather'`` and ``design='ring'``). Local batch sizes may differ. The
ranks must agree on every option and hyperparameter (``logit_scale``, ``logit_bias``,
``temperature``, by value): otherwise every rank raises the same error. A group of one
rank is no group.

Common keyword arguments: ``memory_budget`` (bytes of score tiles, default 48 MiB:
:data:`crossent.core.tiles.BUDGETS`; at least 3 KiB), ``tile_rows`` /
``tile_cols`` (explicit tile shape), ``backend`` (``'auto'``: Triton on CUDA when
installed, else plain PyTorch). Half-precision features accumulate in float32 and the
loss is returned in float32. Scales, temperatures and biases must be finite (scales and
temperatures > 0), numbers and one-element tensors alike. ``torch.func`` transforms are not
supported: they raise ``crossent.core.checks.UnsupportedTransformError`` (a
:class:`crossent.ArgumentError` and a ``NotImplementedError``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core import checks as _checks
from ..core import collectives as D
from ..core.reduction import accumulation_dtype, loss_dtype
from ..core.stats import cross_entropy_rows
from ..kernels.dispatch import resolve_backend
from . import sharded
from .engine import similarity_statistics
from .problem import DESIGNS, Options, Problem, Result, positive_counts

__all__ = [
    "clip_loss",
    "info_nce",
    "nt_xent",
    "supcon_loss",
    "siglip_loss",
    "ClipLoss",
    "SigLipLoss",
    "InfoNCELoss",
    "NTXentLoss",
    "SupConLoss",
]

def _run(context: str, opts: Options, build) -> Result:
    """Validate and build the problem (``build() -> (Problem, scale, bias, hyper)``, with
    ``hyper`` the hyperparameters by name), then its complete statistics: on one device,
    or across the ranks of ``opts.group`` (where a local argument error is raised on every
    rank and the ranks must agree on ``hyper``, see :mod:`crossent.contrastive.sharded`)."""
    _checks.check_no_transform(context)
    if D.spans_ranks(opts.group):
        return sharded.run(context, opts, build)
    prob, scale, bias, _ = build()
    backend = resolve_backend(opts.backend, prob.a.device)
    count = None
    if prob.labels is not None:
        count = positive_counts(prob.labels, prob.labels, prob.acc)
    target = prob.row_target(0, count)
    n, m = prob.a.shape[0], prob.b.shape[0]
    blk = prob.block(target, 0, 0, m)
    stats = similarity_statistics(prob.a, prob.b, scale, bias, blk, opts.plan(n, m), backend,
                                  context=context)
    return Result(stats, 0, n, m, target, scale)


def _global_sum(x: torch.Tensor, opts: Options) -> torch.Tensor:
    """Sum over ranks, differentiable (identity on one device)."""
    if not D.spans_ranks(opts.group):
        return x
    return sharded.all_reduce_sum(x, opts.group)


def _finish(total: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The loss in :func:`crossent.core.reduction.loss_dtype` of the features' dtype."""
    return total.to(loss_dtype(like.dtype))


# ------------------------------------------------------------------ validation


def _check_pair(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor, *, same_rows: bool,
                opts: Options) -> None:
    _checks.check_matrix(name_a, a, "(batch, dim)")
    _checks.check_matrix(name_b, b, "(batch, dim)")
    _checks.check_same_features(name_a, a, name_b, b, dim="feature dimension")
    if same_rows and a.shape[0] != b.shape[0]:
        raise _checks.ArgumentError(
            f"{name_a} and {name_b} must have the same batch size (matched pairs), got "
            f"{a.shape[0]} and {b.shape[0]}")
    _check_options(opts)
    if not D.spans_ranks(opts.group) and a.shape[0] == 0:
        raise _checks.ArgumentError(f"{name_a} must hold at least one row, got shape {list(a.shape)}")


def _check_options(opts: Options) -> None:
    _checks.check_choice("design", opts.design, DESIGNS)
    for name in ("memory_budget", "tile_rows", "tile_cols"):
        value = getattr(opts, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise _checks.ArgumentError(f"{name} must be a positive int or None, got {value!r}")


def _as_scalar(name: str, value, like: torch.Tensor, *, allow_none: bool = False,
               positive: bool = False) -> torch.Tensor | None:
    """A 0-d tensor (the caller's, reshaped, so gradients reach it) or a number made one.

    Its value must be finite, and ``> 0`` with ``positive``, a tensor's as a number's (a
    tensor on an accelerator through a device-side assertion: no host synchronisation)."""
    if value is None:
        if allow_none:
            return None
        raise _checks.ArgumentTypeError(f"{name} must be a number or a one-element tensor, got None")
    if isinstance(value, torch.Tensor):
        _checks.check_floating(name, value)
        if value.numel() != 1:
            raise _checks.ArgumentError(f"{name} must hold one element, got shape {list(value.shape)}")
        if value.device != like.device:
            raise _checks.ArgumentError(f"{name} is on {value.device}, expected {like.device} like the features")
        _checks.check_scalar_tensor(name, value, positive=positive)
        return value.reshape(())
    number = _checks.check_positive(name, value) if positive else _checks.check_finite(name, value)
    return torch.tensor(number, dtype=accumulation_dtype(like.dtype), device=like.device)


def _temperature(temperature, like: torch.Tensor) -> torch.Tensor:
    """``temperature`` as a 0-d tensor (a number must be positive); the scale is ``1 / t``."""
    if not isinstance(temperature, torch.Tensor) and temperature is not None:
        _checks.check_temperature("temperature", temperature, accumulation_dtype(like.dtype))
    return _as_scalar("temperature", temperature, like, positive=True)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalised rows, computed in the accumulation dtype (half inputs: float32)."""
    return F.normalize(x.to(accumulation_dtype(x.dtype)), dim=1)


def _options(memory_budget, tile_rows, tile_cols, backend, group, design) -> Options:
    return Options(memory_budget, tile_rows, tile_cols, backend, group, design)


# ------------------------------------------------------------------ losses


def _image_text(aggregate: str, image_features, text_features, logit_scale, logit_bias, opts: Options):
    """The ``build`` of CLIP and SigLIP: matched pairs, pair ``i`` the positive; CLIP also
    wants the columns' (text->image) statistics."""
    def build():
        _check_pair("image_features", image_features, "text_features", text_features,
                    same_rows=True, opts=opts)
        scale = _as_scalar("logit_scale", logit_scale, image_features, positive=True)
        bias = _as_scalar("logit_bias", logit_bias, image_features, allow_none=True)
        positive = torch.arange(image_features.shape[0], device=image_features.device)
        prob = Problem(aggregate, image_features, text_features, positive=positive,
                       cols=aggregate == "softmax")
        return prob, scale, bias, {"logit_scale": scale, "logit_bias": bias}

    return build


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale, *,
              logit_bias=None, group=None, design: str = "gather", memory_budget: int | None = None,
              tile_rows: int | None = None, tile_cols: int | None = None,
              backend: str = "auto") -> torch.Tensor:
    """CLIP's symmetric InfoNCE loss, with open_clip ``ClipLoss`` semantics.

    ::

        z_ij = logit_scale * <image_i, text_j> (+ logit_bias)
        loss = ( mean_i CE(z_i., i) + mean_j CE(z_.j, j) ) / 2

    Both directions come from one pass over the tiles: each tile gives the image rows'
    and the text columns' statistics at once; the ``N x N`` matrix is never formed.

    Args:
        image_features, text_features: used as given (normalise them first for CLIP's
            cosine similarities); pair ``i`` is the positive.
        logit_scale: the multiplier, already exponentiated (a finite number > 0 or a
            one-element tensor holding one, which receives a gradient).
        logit_bias: optional additive bias, finite (cancels in a softmax; accepted as
            open_clip does).
        group: a ``torch.distributed`` process group; every rank passes its local batch
            and gets the loss of the global batch (``None``: one process).
        design: across ranks, ``'gather'`` or ``'ring'`` (see
            :mod:`crossent.contrastive.sharded`).
        memory_budget: bytes of score tiles (default
            :data:`crossent.kernels.similarity.DEFAULT_MEMORY_BUDGET`).
        tile_rows, tile_cols: an explicit tile shape.
        backend: ``'auto'`` (Triton on CUDA when installed, else PyTorch), ``'torch'`` or
            ``'triton'``.
    Shape:
        image_features and text_features ``(N, D)``; the output a scalar.
    Returns:
        The loss, a 0-d tensor (float32 for half features).
    Example:
        >>> import torch, crossent as ce
        >>> import torch.nn.functional as F
        >>> _ = torch.manual_seed(0)
        >>> img, txt = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(4, 8), dim=1)
        >>> z, pairs = 10.0 * img @ txt.T, torch.arange(4)
        >>> torch.allclose(ce.clip_loss(img, txt, 10.0),
        ...                (F.cross_entropy(z, pairs) + F.cross_entropy(z.T, pairs)) / 2)
        True

    References:
        Radford et al., "Learning Transferable Visual Models From Natural Language
        Supervision", 2021.
    """
    opts = _options(memory_budget, tile_rows, tile_cols, backend, group, design)

    res = _run("crossent.clip_loss", opts, _image_text(
        "softmax", image_features, text_features, logit_scale, logit_bias, opts))
    s = res.stats
    local = (s.row_agg - s.row_dot).sum() + (s.col_agg - s.col_dot).sum()
    return _finish(_global_sum(local, opts) / (2 * res.total_rows), image_features)


def info_nce(query: torch.Tensor, positive_key: torch.Tensor, negative_keys: torch.Tensor | None = None,
             *, temperature=0.1, normalize: bool = True, group=None, design: str = "gather",
             memory_budget: int | None = None, tile_rows: int | None = None,
             tile_cols: int | None = None, backend: str = "auto") -> torch.Tensor:
    """InfoNCE, one direction, in-batch negatives plus extra ones.

    ::

        keys = [positive_key ; negative_keys]                   (N + M, D)
        z_ij = <q_i, k_j> / temperature                           (cosine if ``normalize``)
        loss = mean_i ( logsumexp_j z_ij - z_ii )

    Query ``i``'s positive is ``positive_key[i]``; every other positive key and every
    row of ``negative_keys`` (``(M, D)``, shared by all queries) is a negative.
    ``normalize=True`` (default) L2-normalises queries and keys first.

    Args:
        query: the queries ``q``.
        positive_key: ``positive_key[i]`` is query ``i``'s positive.
        negative_keys: optional extra negatives, shared by all queries.
        temperature: a finite number > 0 or a one-element tensor holding one (learnable;
            its value is checked like a number's, on an accelerator by a device-side
            assertion).
        normalize: L2-normalise queries and keys first.
        group: a ``torch.distributed`` process group; every rank passes its local batch
            and gets the loss of the global batch (``None``: one process).
        design: across ranks, ``'gather'`` or ``'ring'`` (see
            :mod:`crossent.contrastive.sharded`).
        memory_budget: bytes of score tiles (default
            :data:`crossent.kernels.similarity.DEFAULT_MEMORY_BUDGET`).
        tile_rows, tile_cols: an explicit tile shape.
        backend: ``'auto'`` (Triton on CUDA when installed, else PyTorch), ``'torch'`` or
            ``'triton'``.
    Shape:
        query and positive_key ``(N, D)``, negative_keys ``(M, D)``; the output a scalar.
    Returns:
        The loss, a 0-d tensor (float32 for half features).
    Example:
        >>> import torch, crossent as ce
        >>> import torch.nn.functional as F
        >>> _ = torch.manual_seed(0)
        >>> q, k, neg = torch.randn(4, 8), torch.randn(4, 8), torch.randn(3, 8)
        >>> keys = F.normalize(torch.cat([k, neg]), dim=1)
        >>> z = F.normalize(q, dim=1) @ keys.T / 0.1
        >>> torch.allclose(ce.info_nce(q, k, neg, temperature=0.1),
        ...                F.cross_entropy(z, torch.arange(4)))
        True

    References:
        Oord, Li & Vinyals, "Representation Learning with Contrastive Predictive Coding",
        2018.
    """
    opts = _options(memory_budget, tile_rows, tile_cols, backend, group, design)

    def build():
        _check_pair("query", query, "positive_key", positive_key, same_rows=True, opts=opts)
        keys = positive_key
        if negative_keys is not None:
            _check_pair("query", query, "negative_keys", negative_keys, same_rows=False,
                        opts=Options(group=opts.group))
            keys = torch.cat([positive_key, negative_keys])
        t = _temperature(temperature, query)
        q = _normalize(query) if normalize else query
        keys = _normalize(keys) if normalize else keys
        positive = torch.arange(query.shape[0], device=query.device)
        return Problem("softmax", q, keys, positive=positive), 1.0 / t, None, {"temperature": t}

    res = _run("crossent.info_nce", opts, build)
    local = (res.stats.row_agg - res.stats.row_dot).sum()
    return _finish(_global_sum(local, opts) / res.total_rows, query)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, *, temperature=0.5, group=None,
            design: str = "gather", memory_budget: int | None = None, tile_rows: int | None = None,
            tile_cols: int | None = None, backend: str = "auto") -> torch.Tensor:
    """SimCLR's NT-Xent (normalised temperature-scaled cross-entropy) over the ``2N`` views.

    ::

        v = normalize([z1 ; z2])                                  (2N, D)
        z_kl = <v_k, v_l> / temperature,   z_kk excluded
        loss = mean_k ( logsumexp_{l != k} z_kl - z_{k, k'} ),   k' = the other view of k

    Args:
        z1, z2: the two augmented views of the same ``N`` samples.
        temperature: a positive number or a one-element tensor (learnable).
        group: a ``torch.distributed`` process group; every rank passes its local batch
            and gets the loss of the global batch (``None``: one process).
        design: across ranks, ``'gather'`` or ``'ring'`` (see
            :mod:`crossent.contrastive.sharded`).
        memory_budget: bytes of score tiles (default
            :data:`crossent.kernels.similarity.DEFAULT_MEMORY_BUDGET`).
        tile_rows, tile_cols: an explicit tile shape.
        backend: ``'auto'`` (Triton on CUDA when installed, else PyTorch), ``'torch'`` or
            ``'triton'``.
    Shape:
        z1 and z2 ``(N, D)``; the output a scalar.
    Returns:
        The loss, a 0-d tensor (float32 for half features).
    Example:
        >>> import torch, crossent as ce
        >>> import torch.nn.functional as F
        >>> _ = torch.manual_seed(0)
        >>> z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
        >>> v = F.normalize(torch.cat([z1, z2]), dim=1)
        >>> z = (v @ v.T / 0.5).fill_diagonal_(float("-inf"))
        >>> torch.allclose(ce.nt_xent(z1, z2, temperature=0.5),
        ...                F.cross_entropy(z, (torch.arange(8) + 4) % 8))
        True

    References:
        Chen et al., "A Simple Framework for Contrastive Learning of Visual
        Representations", 2020.
    """
    opts = _options(memory_budget, tile_rows, tile_cols, backend, group, design)

    def build():
        _check_pair("z1", z1, "z2", z2, same_rows=True, opts=opts)
        t = _temperature(temperature, z1)
        views = _normalize(torch.cat([z1, z2]))
        n = z1.shape[0]
        k = torch.arange(2 * n, device=z1.device)
        prob = Problem("softmax", views, views, positive=(k + n) % (2 * n), self_offset=0)
        return prob, 1.0 / t, None, {"temperature": t}

    res = _run("crossent.nt_xent", opts, build)
    local = (res.stats.row_agg - res.stats.row_dot).sum()
    return _finish(_global_sum(local, opts) / res.total_rows, z1)


def supcon_loss(features: torch.Tensor, labels: torch.Tensor | None = None, *, temperature=0.07,
                base_temperature: float = 0.07, group=None, design: str = "gather",
                memory_budget: int | None = None, tile_rows: int | None = None,
                tile_cols: int | None = None, backend: str = "auto") -> torch.Tensor:
    """Supervised contrastive loss (SupCon), with the reference code's conventions.

    ::

        anchors a_k: every view of every sample, L2-normalised   (N*V, D), view-major
        z_kl = <a_k, a_l> / temperature,   z_kk excluded
        loss_k = -(temperature / base_temperature) * mean_{p in P(k)} log softmax_l(z_k.)_p
        loss = mean_k loss_k            (loss_k = 0 when P(k) is empty, still counted)

    with ``P(k)`` the other anchors with ``k``'s label.

    Args:
        features: one view ``(N, D)`` or ``V`` views ``(N, V, D, ...)`` (trailing
            dimensions flattened, anchors ordered as the reference's
            ``torch.cat(torch.unbind(features, 1))``).
        labels: ``(N,)`` integers, or None (each sample its own class: SimCLR's
            positives, the other views; not allowed across ranks).
        temperature: a positive number or a one-element tensor (learnable).
        base_temperature: the reference's rescaling constant.
        group: a ``torch.distributed`` process group; every rank passes its local batch
            and gets the loss of the global batch (``None``: one process).
        design: across ranks, ``'gather'`` or ``'ring'`` (see
            :mod:`crossent.contrastive.sharded`).
        memory_budget: bytes of score tiles (default
            :data:`crossent.kernels.similarity.DEFAULT_MEMORY_BUDGET`).
        tile_rows, tile_cols: an explicit tile shape.
        backend: ``'auto'`` (Triton on CUDA when installed, else PyTorch), ``'torch'`` or
            ``'triton'``.
    Shape:
        features ``(N, D)`` or ``(N, V, D, ...)``, labels ``(N,)``; the output a scalar.
    Returns:
        The loss, a 0-d tensor (float32 for half features).
    Example:
        >>> import torch, crossent as ce
        >>> import torch.nn.functional as F
        >>> _ = torch.manual_seed(0)
        >>> x, labels = torch.randn(6, 8), torch.tensor([0, 0, 1, 1, 2, 2])
        >>> a = F.normalize(x, dim=1)
        >>> log_p = (a @ a.T / 0.07).fill_diagonal_(float("-inf")).log_softmax(1)
        >>> positive = (labels[:, None] == labels[None, :]) & ~torch.eye(6, dtype=torch.bool)
        >>> ref = -(log_p.masked_fill(~positive, 0).sum(1) / positive.sum(1)).mean()
        >>> torch.allclose(ce.supcon_loss(x, labels), ref)
        True

    References:
        Khosla et al., "Supervised Contrastive Learning", 2020.
    """
    opts = _options(memory_budget, tile_rows, tile_cols, backend, group, design)

    def build():
        _checks.check_floating("features", features)
        if features.dim() < 2:
            raise _checks.ArgumentError(
                f"features must be (batch, dim) or (batch, views, dim, ...), got shape {list(features.shape)}")
        n = features.shape[0]
        if features.dim() >= 3:  # trailing dimensions flattened, as the reference does
            flat = features.reshape(features.shape[0], features.shape[1], math.prod(features.shape[2:]))
            num_views, anchors = flat.shape[1], torch.cat(torch.unbind(flat, 1))
        else:
            num_views, anchors = 1, features
        lab = labels
        if lab is None:
            if D.spans_ranks(opts.group):
                raise _checks.ArgumentError(
                    "supcon_loss across ranks needs labels (sample identities are not global); "
                    "pass labels, e.g. the global index of each sample")
            lab = torch.arange(n, device=features.device)
        elif not isinstance(lab, torch.Tensor) or lab.is_floating_point() or lab.is_complex() \
                or lab.dtype == torch.bool:
            got = lab.dtype if isinstance(lab, torch.Tensor) else type(lab).__name__
            raise _checks.ArgumentTypeError(f"labels must be an integer tensor (e.g. Long), got {got}")
        elif lab.dim() != 1 or lab.shape[0] != n:
            raise _checks.ArgumentError(f"labels must have shape [{n}] (one per sample), got {list(lab.shape)}")
        elif lab.device != features.device:
            raise _checks.ArgumentError(f"labels is on {lab.device}, expected {features.device}")
        _check_pair("features", anchors, "features", anchors, same_rows=True, opts=opts)
        t = _temperature(temperature, features)
        _checks.check_positive("base_temperature", base_temperature, allow_none=False)
        anchors = _normalize(anchors)
        prob = Problem("softmax", anchors, anchors, labels=lab.long().repeat(num_views), self_offset=0)
        return prob, 1.0 / t, None, {"temperature": t, "base_temperature": base_temperature}

    res = _run("crossent.supcon_loss", opts, build)
    target = res.row_target
    rows = cross_entropy_rows(res.stats.row_agg, res.stats.row_dot, target.mass, target.count > 0)
    local = rows.sum() * (1.0 / (res.scale * float(base_temperature)))
    return _finish(_global_sum(local, opts) / res.total_rows, features)


def siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale,
                logit_bias=None, *, group=None, design: str = "gather",
                memory_budget: int | None = None, tile_rows: int | None = None,
                tile_cols: int | None = None, backend: str = "auto") -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss, normalised per image.

    ::

        z_ij = logit_scale * <image_i, text_j> + logit_bias,   y_ij = +1 if i = j else -1
        loss = -(1/N) sum_ij log sigmoid(y_ij z_ij) = (1/N) sum_i ( sum_j softplus(z_ij) - z_ii )

    as open_clip's ``SigLipLoss`` (there ``N`` is the local batch; here, across ranks,
    the global one).

    Args:
        image_features, text_features: used as given; pair ``i`` is the positive.
        logit_scale: the multiplier, already exponentiated (a finite number > 0 or a
            one-element tensor holding one, which receives a gradient).
        logit_bias: the additive bias (a finite number or a one-element tensor, which
            receives a gradient); ``None``: 0.
        group: a ``torch.distributed`` process group; every rank passes its local batch
            and gets the loss of the global batch (``None``: one process).
        design: across ranks, ``'gather'`` or ``'ring'`` (see
            :mod:`crossent.contrastive.sharded`).
        memory_budget: bytes of score tiles (default
            :data:`crossent.kernels.similarity.DEFAULT_MEMORY_BUDGET`).
        tile_rows, tile_cols: an explicit tile shape.
        backend: ``'auto'`` (Triton on CUDA when installed, else PyTorch), ``'torch'`` or
            ``'triton'``.
    Shape:
        image_features and text_features ``(N, D)``; the output a scalar.
    Returns:
        The loss, a 0-d tensor (float32 for half features).
    Example:
        >>> import torch, crossent as ce
        >>> import torch.nn.functional as F
        >>> _ = torch.manual_seed(0)
        >>> img, txt = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(4, 8), dim=1)
        >>> z, y = 10.0 * img @ txt.T - 5.0, 2 * torch.eye(4) - 1
        >>> torch.allclose(ce.siglip_loss(img, txt, 10.0, -5.0), -F.logsigmoid(y * z).sum() / 4)
        True

    References:
        Zhai et al., "Sigmoid Loss for Language Image Pre-Training", 2023.
    """
    opts = _options(memory_budget, tile_rows, tile_cols, backend, group, design)

    res = _run("crossent.siglip_loss", opts, _image_text(
        "sigmoid", image_features, text_features, logit_scale, logit_bias, opts))
    local = (res.stats.row_agg - res.stats.row_dot).sum()
    return _finish(_global_sum(local, opts) / res.total_rows, image_features)


# ------------------------------------------------------------------ modules


class _ContrastiveModule(nn.Module):
    _OPTIONS = ("group", "design", "memory_budget", "tile_rows", "tile_cols", "backend")

    def _opts(self) -> dict:
        return {k: getattr(self, k) for k in self._OPTIONS}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in self._OPTIONS if getattr(self, k) is not None)


def _ranks_options(module, rank: int, world_size: int, group, design: str | None,
                   memory_budget, tile_rows, tile_cols, backend) -> None:
    """open_clip's ``rank`` / ``world_size`` become a process group (the default one)."""
    if world_size > 1 and group is None:
        import torch.distributed as dist

        group = dist.group.WORLD
    module.rank, module.world_size = rank, world_size
    module.group, module.design = group, design or "gather"
    module.memory_budget, module.tile_rows, module.tile_cols, module.backend = (
        memory_budget, tile_rows, tile_cols, backend)


def _check_world(module) -> None:
    if module.world_size > 1:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise _checks.ArgumentError(
                f"world_size={module.world_size} needs torch.distributed to be initialised")
        actual = (dist.get_world_size(module.group), dist.get_rank(module.group))
        if actual != (module.world_size, module.rank):
            raise _checks.ArgumentError(
                f"world_size={module.world_size}, rank={module.rank} do not match the process "
                f"group (world size {actual[0]}, rank {actual[1]})")


class ClipLoss(_ContrastiveModule):
    """Drop-in for open_clip's ``ClipLoss``: same constructor and ``forward`` arguments.

    ``forward(image_features, text_features, logit_scale, logit_bias=None,
    output_dict=False)`` is :func:`crossent.clip_loss`::

        loss = ( mean_i CE(z_i., i) + mean_j CE(z_.j, j) ) / 2,   z = logit_scale * I T^T

    ``local_loss`` / ``gather_with_grad`` choose how open_clip approximates the global
    loss; crossent always computes it exactly (the value is the global loss on every
    rank, gradients as one process holding the global batch after DDP's averaging), so
    they are accepted and only pick ``design='gather'`` unless ``design`` is given.
    ``cache_labels`` has nothing to cache. ``use_horovod=True`` is not supported.
    ``rank`` / ``world_size`` > 1 use the default process group (or ``group``).

    Args:
        local_loss, gather_with_grad, cache_labels: open_clip's; accepted (see above).
        rank, world_size: this process's rank and the number of ranks (checked against the
            process group in ``forward``).
        use_horovod: must be False.
        group, design, memory_budget, tile_rows, tile_cols, backend: as
            :func:`crossent.clip_loss` (``design`` defaults to ``'gather'``).
    Shape:
        image_features and text_features ``(N, D)``; the output a scalar.
    Returns:
        ``forward`` returns the loss, or ``{"contrastive_loss": loss}`` with
        ``output_dict=True``.
    Example:
        >>> import torch, crossent as ce
        >>> import torch.nn.functional as F
        >>> _ = torch.manual_seed(0)
        >>> img, txt = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(4, 8), dim=1)
        >>> loss_fn = ce.ClipLoss()
        >>> loss_fn
        ClipLoss(design='gather', backend='auto')
        >>> torch.allclose(loss_fn(img, txt, 10.0), ce.clip_loss(img, txt, 10.0))
        True
        >>> list(loss_fn(img, txt, torch.tensor(10.0), output_dict=True))
        ['contrastive_loss']

    References:
        Radford et al., "Learning Transferable Visual Models From Natural Language
        Supervision", 2021; open_clip, ``open_clip.loss.ClipLoss``.
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False,
                 cache_labels: bool = False, rank: int = 0, world_size: int = 1,
                 use_horovod: bool = False, *, group=None, design: str | None = None,
                 memory_budget: int | None = None, tile_rows: int | None = None,
                 tile_cols: int | None = None, backend: str = "auto") -> None:
        super().__init__()
        if use_horovod:
            raise _checks.ArgumentError("use_horovod=True is not supported: crossent uses torch.distributed")
        self.local_loss, self.gather_with_grad, self.cache_labels = local_loss, gather_with_grad, cache_labels
        _ranks_options(self, rank, world_size, group, design, memory_budget, tile_rows, tile_cols, backend)

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict: bool = False):
        _check_world(self)
        loss = clip_loss(image_features, text_features, logit_scale, logit_bias=logit_bias, **self._opts())
        return {"contrastive_loss": loss} if output_dict else loss


class SigLipLoss(_ContrastiveModule):
    """Drop-in for open_clip's ``SigLipLoss``: same constructor and ``forward`` arguments.

    ``forward(image_features, text_features, logit_scale, logit_bias=None,
    output_dict=False)`` is :func:`crossent.siglip_loss`::

        loss = -(1/N) sum_ij log sigmoid(y_ij z_ij),   z = logit_scale * I T^T + logit_bias

    ``dist_impl`` ``'bidir'`` / ``'shift'`` (neighbour exchanges) map to
    ``design='ring'``, ``'gather'`` / ``'reduce'`` to ``design='gather'``. Across ranks the
    value is normalised by the global batch (open_clip: the local one; equal on average
    when local batches are equal).

    Args:
        cache_labels: open_clip's; accepted, nothing to cache.
        rank, world_size: this process's rank and the number of ranks.
        dist_impl: ``'bidir'`` (default) | ``'shift'`` | ``'gather'`` | ``'reduce'``.
        group, design, memory_budget, tile_rows, tile_cols, backend: as
            :func:`crossent.siglip_loss` (``design`` overrides ``dist_impl``).
    Shape:
        image_features and text_features ``(N, D)``; the output a scalar.
    Returns:
        ``forward`` returns the loss, or ``{"contrastive_loss": loss}`` with
        ``output_dict=True``.
    Example:
        >>> import torch, crossent as ce
        >>> import torch.nn.functional as F
        >>> _ = torch.manual_seed(0)
        >>> img, txt = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(4, 8), dim=1)
        >>> loss_fn = ce.SigLipLoss()
        >>> loss_fn
        SigLipLoss(design='ring', backend='auto')
        >>> torch.allclose(loss_fn(img, txt, 10.0, -5.0), ce.siglip_loss(img, txt, 10.0, -5.0))
        True

    References:
        Zhai et al., "Sigmoid Loss for Language Image Pre-Training", 2023; open_clip,
        ``open_clip.loss.SigLipLoss``.
    """

    _DIST = {"bidir": "ring", "shift": "ring", "gather": "gather", "reduce": "gather"}

    def __init__(self, cache_labels: bool = False, rank: int = 0, world_size: int = 1,
                 dist_impl: str | None = None, *, group=None, design: str | None = None,
                 memory_budget: int | None = None, tile_rows: int | None = None,
                 tile_cols: int | None = None, backend: str = "auto") -> None:
        super().__init__()
        dist_impl = dist_impl or "bidir"
        _checks.check_choice("dist_impl", dist_impl, tuple(self._DIST))
        self.cache_labels, self.dist_impl = cache_labels, dist_impl
        _ranks_options(self, rank, world_size, group, design or self._DIST[dist_impl],
                       memory_budget, tile_rows, tile_cols, backend)

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict: bool = False):
        _check_world(self)
        loss = siglip_loss(image_features, text_features, logit_scale, logit_bias, **self._opts())
        return {"contrastive_loss": loss} if output_dict else loss


class _Simple(_ContrastiveModule):
    def __init__(self, group=None, design: str = "gather", memory_budget: int | None = None,
                 tile_rows: int | None = None, tile_cols: int | None = None, backend: str = "auto"):
        super().__init__()
        self.group, self.design, self.memory_budget = group, design, memory_budget
        self.tile_rows, self.tile_cols, self.backend = tile_rows, tile_cols, backend


class InfoNCELoss(_Simple):
    """:func:`info_nce` as a module; ``forward(query, positive_key, negative_keys=None)``.

    ::

        loss = mean_i ( logsumexp_j z_ij - z_ii ),   z_ij = <q_i, k_j> / temperature

    Args:
        temperature, normalize: as :func:`crossent.info_nce`.
        **options: ``group``, ``design``, ``memory_budget``, ``tile_rows``, ``tile_cols``,
            ``backend``, as :func:`crossent.info_nce`.
    Shape:
        query and positive_key ``(N, D)``, negative_keys ``(M, D)``; the output a scalar.
    Returns:
        ``forward`` returns the loss, a 0-d tensor.
    Example:
        >>> import torch, crossent as ce
        >>> _ = torch.manual_seed(0)
        >>> q, k, neg = torch.randn(4, 8), torch.randn(4, 8), torch.randn(3, 8)
        >>> torch.allclose(ce.InfoNCELoss(temperature=0.1)(q, k, neg),
        ...                ce.info_nce(q, k, neg, temperature=0.1))
        True

    References:
        Oord, Li & Vinyals, "Representation Learning with Contrastive Predictive Coding",
        2018.
    """

    def __init__(self, temperature=0.1, normalize: bool = True, **options) -> None:
        super().__init__(**options)
        self.temperature, self.normalize = temperature, normalize

    def forward(self, query, positive_key, negative_keys=None):
        return info_nce(query, positive_key, negative_keys, temperature=self.temperature,
                        normalize=self.normalize, **self._opts())


class NTXentLoss(_Simple):
    """:func:`nt_xent` as a module; ``forward(z1, z2)``.

    ::

        loss = mean_k ( logsumexp_{l != k} z_kl - z_{k, k'} ),   z_kl = <v_k, v_l> / temperature

    Args:
        temperature: as :func:`crossent.nt_xent`.
        **options: ``group``, ``design``, ``memory_budget``, ``tile_rows``, ``tile_cols``,
            ``backend``, as :func:`crossent.nt_xent`.
    Shape:
        z1 and z2 ``(N, D)``; the output a scalar.
    Returns:
        ``forward`` returns the loss, a 0-d tensor.
    Example:
        >>> import torch, crossent as ce
        >>> _ = torch.manual_seed(0)
        >>> z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
        >>> torch.allclose(ce.NTXentLoss(temperature=0.5)(z1, z2), ce.nt_xent(z1, z2))
        True

    References:
        Chen et al., "A Simple Framework for Contrastive Learning of Visual
        Representations", 2020.
    """

    def __init__(self, temperature=0.5, **options) -> None:
        super().__init__(**options)
        self.temperature = temperature

    def forward(self, z1, z2):
        return nt_xent(z1, z2, temperature=self.temperature, **self._opts())


class SupConLoss(_Simple):
    """:func:`supcon_loss` as a module; ``forward(features, labels=None)``.

    ::

        loss_k = -(temperature / base_temperature) * mean_{p in P(k)} log softmax_l(z_k.)_p

    Args:
        temperature, base_temperature: as :func:`crossent.supcon_loss`.
        **options: ``group``, ``design``, ``memory_budget``, ``tile_rows``, ``tile_cols``,
            ``backend``, as :func:`crossent.supcon_loss`.
    Shape:
        features ``(N, D)`` or ``(N, V, D, ...)``, labels ``(N,)``; the output a scalar.
    Returns:
        ``forward`` returns the loss, a 0-d tensor.
    Example:
        >>> import torch, crossent as ce
        >>> _ = torch.manual_seed(0)
        >>> views, labels = torch.randn(6, 2, 8), torch.tensor([0, 0, 1, 1, 2, 2])
        >>> torch.allclose(ce.SupConLoss()(views, labels), ce.supcon_loss(views, labels))
        True

    References:
        Khosla et al., "Supervised Contrastive Learning", 2020.
    """

    def __init__(self, temperature=0.07, base_temperature: float = 0.07, **options) -> None:
        super().__init__(**options)
        self.temperature, self.base_temperature = temperature, base_temperature

    def forward(self, features, labels=None):
        return supcon_loss(features, labels, temperature=self.temperature,
                           base_temperature=self.base_temperature, **self._opts())
