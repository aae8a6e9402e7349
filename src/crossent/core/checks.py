"""Argument validation, in one place, with messages that name the argument.

PyTorch raises ``RuntimeError`` for many argument mistakes where Python convention is
``ValueError``/``TypeError``. crossent raises exceptions that are *both*: ``ArgumentError``
subclasses ``ValueError`` and ``RuntimeError``, ``ArgumentTypeError`` subclasses
``TypeError`` and ``RuntimeError``, so ``except RuntimeError`` code written for PyTorch
keeps working while new code can catch the precise class. Index errors are ``IndexError``
as in PyTorch.

Checks that need the *values* of a tensor (target bounds, probabilities in [0, 1]) run
eagerly on the CPU, where they cost no synchronisation. On accelerators, and under
``torch.compile``, they become ``torch._assert_async`` assertions that are part of the
computation, so the hot path never waits for the host and the graph does not break.
"""

from __future__ import annotations

import math

import torch

REDUCTIONS = ("none", "mean", "sum")


class ArgumentError(ValueError, RuntimeError):
    """A bad argument value (PyTorch would raise ``RuntimeError`` or ``ValueError``).

    ::

        ArgumentError  <:  ValueError, RuntimeError

    Both bases, so code written for PyTorch's error (``except RuntimeError``) or for
    Python's (``except ValueError``) catches it. The message names the argument, the
    expected and the received value.

    Example:
        >>> import torch, crossent as ce
        >>> try:
        ...     ce.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), reduction="avg")
        ... except ValueError as error:
        ...     print(type(error).__name__, isinstance(error, RuntimeError))
        ArgumentError True

    References:
        PyTorch, ``torch.nn.functional`` argument checks.
    """


class ArgumentTypeError(TypeError, RuntimeError):
    """A bad argument dtype or type (PyTorch would raise ``RuntimeError``).

    ::

        ArgumentTypeError  <:  TypeError, RuntimeError

    Example:
        >>> import torch, crossent as ce
        >>> try:
        ...     ce.cross_entropy(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))
        ... except TypeError as error:
        ...     print(type(error).__name__, isinstance(error, RuntimeError))
        ArgumentTypeError True

    References:
        PyTorch, ``torch.nn.functional`` argument checks.
    """


class UnsupportedDtypeError(ArgumentTypeError, NotImplementedError):
    """A tensor of a dtype the operation has no kernel for (PyTorch: ``NotImplementedError``)."""


class TargetIndexError(IndexError):
    """A class index outside ``[0, C)`` that is not ``ignore_index``.

    ::

        raised when  not (0 <= y_i < C)  and  y_i != ignore_index;   TargetIndexError <: IndexError

    Example:
        >>> import torch, crossent as ce
        >>> ce.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 5]))
        Traceback (most recent call last):
            ...
        crossent.core.checks.TargetIndexError: Target 5 is out of bounds: ...

    References:
        PyTorch, ``torch.nn.functional.cross_entropy`` ("Target ... is out of bounds").
    """


def check_reduction(reduction: str, allowed: tuple[str, ...] = REDUCTIONS) -> str:
    if reduction not in allowed:
        raise ArgumentError(
            f"{reduction} is not a valid value for reduction: expected one of {allowed}"
        )
    return reduction


def check_floating(name: str, tensor: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise UnsupportedDtypeError(
            f"{name} must be a floating point tensor (float16, bfloat16, float32, float64), "
            f"got {tensor.dtype}"
        )


def check_number(name: str, value) -> float:
    """``value`` is a real number (a Python or NumPy scalar, not a string or a bool).

    A one-element tensor is read as its value, unless it requires grad (or is a
    ``torch.func`` transform's tensor): its gradient would be lost silently, so that is an
    :class:`ArgumentTypeError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise ArgumentTypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if isinstance(value, torch.Tensor) and (
            value.requires_grad or torch._C._functorch.is_functorch_wrapped_tensor(value)):
        raise ArgumentTypeError(
            f"{name} must be a number, got a tensor that requires grad (or is transformed by "
            f"torch.func): its gradient would be lost (pass a float, or scale the inputs by "
            f"the tensor yourself)"
        )
    return float(value)


def check_int(name: str, value) -> int:
    """``value`` is an integer (not a float, not a bool)."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ArgumentTypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


# One validator per kind of float hyperparameter. Each rejects NaN and +-inf (every
# comparison with NaN is False, so the range tests are written to fail on it) and raises
# ArgumentError naming the argument, the expected range and the received value.


def check_finite(name: str, value) -> float:
    """Any finite real number."""
    value = check_number(name, value)
    if not math.isfinite(value):
        raise ArgumentError(f"{name} must be a finite number, got {value}")
    return value


def check_unit_interval(name: str, value: float) -> float:
    """A number in ``[0, 1]``."""
    value = check_number(name, value)
    if not 0.0 <= value <= 1.0:
        raise ArgumentError(f"{name} must be between 0.0 and 1.0. Got: {value}")
    return value


def check_positive(name: str, value: float | None, allow_none: bool = True) -> float | None:
    """A finite number ``> 0`` (or None when ``allow_none``)."""
    if value is None and allow_none:
        return None
    value = check_number(name, value)
    if not (value > 0.0 and math.isfinite(value)):
        raise ArgumentError(f"{name} must be a positive number (finite, > 0), got {value}")
    return value


def check_non_negative(name: str, value: float) -> float:
    """A finite number ``>= 0``."""
    value = check_number(name, value)
    if not (value >= 0.0 and math.isfinite(value)):
        raise ArgumentError(f"{name} must be >= 0 (and finite), got {value}")
    return value


def check_temperature(name: str, value, dtype: torch.dtype = torch.float64) -> float:
    """A temperature ``T`` the scores are divided by: a finite number ``> 0`` whose inverse
    is finite in ``dtype`` (the scale ``1/T`` the losses multiply by)."""
    value = check_positive(name, value, allow_none=False)
    if not 1.0 / value <= torch.finfo(dtype).max:
        raise ArgumentError(
            f"{name} must be a positive number whose inverse is finite in {dtype} (> "
            f"{1.0 / torch.finfo(dtype).max:.3g}), got {value}"
        )
    return value


def check_softcap(name: str, value: float | None) -> float | None:
    """A soft cap ``cap * tanh(z / cap)``: a finite number ``> 0``; None or ``+inf`` mean
    no cap (returned as None: as the cap grows, ``cap * tanh(z / cap)`` tends to ``z``)."""
    if value is None:
        return None
    value = check_number(name, value)
    if value == math.inf:
        return None
    if not (value > 0.0 and math.isfinite(value)):
        raise ArgumentError(
            f"{name} must be a positive number (finite, > 0; None or inf for no cap), got {value}")
    return value


def check_scalar_tensor(name: str, tensor: torch.Tensor, *, positive: bool = False) -> None:
    """The value of a one-element tensor hyperparameter (a learnable scale or temperature)
    is finite, and ``> 0`` with ``positive``: the checks of :func:`check_finite` and
    :func:`check_positive` for a number.

    Eager on the CPU (``ArgumentError`` with the value); elsewhere (and under
    ``torch.compile``) a device-side assertion, so the host never waits for the device.
    """
    value = plain_tensor(tensor).detach()
    ok = torch.isfinite(value)
    if positive:
        ok = ok & (value > 0)
    expected = "a positive number (finite, > 0)" if positive else "a finite number"
    if value.device.type == "cpu" and not torch.compiler.is_compiling():
        if not bool(ok.all()):
            got = value.reshape(-1)[0].item() if value.numel() == 1 else value.tolist()
            raise ArgumentError(f"{name} must be {expected}, got a tensor holding {got}")
    else:
        torch._assert_async(ok.all(), f"crossent: {name} must be {expected}")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ArgumentError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_class_weight(weight: torch.Tensor | None, num_classes: int, like: torch.Tensor) -> None:
    """``weight`` is ``None`` or a floating ``(C,)`` tensor on the input's device."""
    if weight is None:
        return
    check_floating("weight", weight)
    if weight.dim() != 1 or weight.numel() != num_classes:
        raise ArgumentError(
            f"weight tensor should be defined either for all {num_classes} classes or no "
            f"classes but got weight tensor of shape: {list(weight.shape)}"
        )
    if weight.dtype != like.dtype:
        raise ArgumentTypeError(
            f"weight has dtype {weight.dtype}, expected the input's dtype {like.dtype} "
            f"(expected scalar type {like.dtype} but found {weight.dtype})"
        )
    if weight.device != like.device:
        raise ArgumentError(f"weight is on {weight.device}, expected {like.device} like input")


def check_index_target_dtype(target: torch.Tensor) -> None:
    if target.dtype not in (torch.int64, torch.uint8):
        raise ArgumentTypeError(
            f"expected target dtype to be Long or Byte (class indices), but got {target.dtype}"
        )


def check_index_target_shape(input: torch.Tensor, target: torch.Tensor) -> None:
    """Class-index targets: input ``(C,)`` with target ``()``; ``(N, C, *d)`` with ``(N, *d)``."""
    if input.dim() == 1:
        if target.dim() != 0:
            raise ArgumentError(
                f"target must be 0-D (a class index) for a 1-D input of shape "
                f"{list(input.shape)}, got target of shape {list(target.shape)}"
            )
        return
    if target.dim() != input.dim() - 1:
        raise ArgumentError(
            f"target must have {input.dim() - 1} dimensions for input of shape "
            f"{list(input.shape)} (0D or 1D target tensor expected for 2-D input, "
            f"multi-target not supported), got target of shape {list(target.shape)}"
        )
    if input.shape[0] != target.shape[0]:
        raise ArgumentError(
            f"Expected input batch_size ({input.shape[0]}) to match target batch_size "
            f"({target.shape[0]})."
        )
    expected = (input.shape[0],) + tuple(input.shape[2:])
    if tuple(target.shape) != expected:
        raise ArgumentError(
            f"Expected target size {list(expected)}, got {list(target.shape)}"
        )


def check_class_index_target(target, expected_shape, num_classes: int, ignore_index: int,
                             device: torch.device, *, shape_hint: str = "",
                             bounds: bool = True) -> torch.Tensor:
    """The one validator of a class-index target of a fused front (linear, margin heads):
    a tensor of int64/uint8 class indices of ``expected_shape`` on ``device``, within
    ``[0, num_classes)`` or ``ignore_index`` (the bounds only with ``bounds``, and only in
    eager mode: a value check). Returns the target as int64.

    Raises:
        ArgumentTypeError: not a tensor, or not an integer dtype.
        ArgumentError: a wrong shape (``shape_hint`` is appended to the message) or device.
        TargetIndexError: an index out of range.
    """
    if not isinstance(target, torch.Tensor):
        raise ArgumentTypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    check_index_target_dtype(target)
    if tuple(target.shape) != tuple(expected_shape):
        raise ArgumentError(f"target must have shape {list(expected_shape)}{shape_hint}, "
                            f"got {list(target.shape)}")
    if target.device != device:
        raise ArgumentError(f"target is on {target.device}, expected {device}")
    if bounds and not torch.compiler.is_compiling():
        check_index_bounds(target, num_classes, ignore_index)
    return target.long()


def check_prob_target_shape(input: torch.Tensor, target: torch.Tensor) -> None:
    if target.shape != input.shape:
        raise ArgumentError(
            f"target with class probabilities must have the input's shape "
            f"{list(input.shape)}, got {list(target.shape)}"
        )


def check_index_bounds(target: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """Every class index is in ``[0, num_classes)`` or equals ``ignore_index``.

    Eager on the CPU (``IndexError`` naming the first offending value); a device-side
    assertion elsewhere, so no host synchronisation. Under ``torch.func`` transforms the
    check reads the tensor under the transform's wrappers (every value of a ``vmap``ped
    batch), so it needs no data-dependent branch on a transformed tensor.
    """
    target = plain_tensor(target)
    if target.numel() == 0:
        return
    t = target.long() if target.dtype != torch.int64 else target
    bad = ((t < 0) | (t >= num_classes)) & (t != ignore_index)
    if t.device.type == "cpu" and not torch.compiler.is_compiling():
        if bool(bad.any()):
            first = int(t[bad].flatten()[0])
            raise TargetIndexError(
                f"Target {first} is out of bounds: target values must be in "
                f"[0, {num_classes}) or equal ignore_index={ignore_index}."
            )
    else:
        torch._assert_async(~bad.any(), "crossent: target class index out of bounds")


def check_in_unit_interval_values(name: str, tensor: torch.Tensor) -> None:
    """Every element of ``tensor`` is in [0, 1] (eager on CPU, device assertion elsewhere)."""
    tensor = plain_tensor(tensor)
    if tensor.numel() == 0:
        return
    bad = (tensor < 0) | (tensor > 1) | torch.isnan(tensor)
    if tensor.device.type == "cpu" and not torch.compiler.is_compiling():
        if bool(bad.any()):
            raise ArgumentError(f"all elements of {name} should be between 0 and 1")
    else:
        torch._assert_async(~bad.any(), f"crossent: {name} outside [0, 1]")


def check_same_size(input: torch.Tensor, target: torch.Tensor) -> None:
    if target.shape != input.shape:
        raise ArgumentError(
            f"Target size ({target.shape}) must be the same as input size ({input.shape})"
        )


def check_broadcastable(name: str, tensor: torch.Tensor | None, shape: torch.Size) -> None:
    if tensor is None:
        return
    try:
        out = torch.broadcast_shapes(tensor.shape, shape)
    except RuntimeError as exc:
        raise ArgumentError(
            f"{name} of shape {list(tensor.shape)} cannot be broadcast to the input's shape "
            f"{list(shape)}"
        ) from exc
    if tuple(out) != tuple(shape):
        raise ArgumentError(
            f"{name} of shape {list(tensor.shape)} would broadcast the input's shape "
            f"{list(shape)} to {list(out)}; expected it to broadcast to the input's shape"
        )


# ------------------------------------------------------------ paired features


def check_matrix(name: str, x: torch.Tensor, layout: str) -> None:
    """``x`` is a floating 2-D tensor; ``layout`` names its dimensions in the message,
    e.g. ``"(batch, dim)"``."""
    check_floating(name, x)
    if x.dim() != 2:
        raise ArgumentError(f"{name} must be 2-D {layout}, got shape {list(x.shape)}")


def check_same_features(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor, *,
                        dim: str = "feature dimension") -> None:
    """Two tensors scored against each other (``a @ b.T``: embeddings and class weights,
    hidden states and an output layer, two towers of features): equal last dimensions
    (``dim`` names it in the message), the same dtype, the same device.

    Raises:
        ArgumentError: the last dimensions or the devices differ.
        ArgumentTypeError: the dtypes differ.
    """
    if a.shape[-1] != b.shape[-1]:
        raise ArgumentError(
            f"{name_a} and {name_b} must have the same {dim}, got {a.shape[-1]} and {b.shape[-1]}")
    if a.dtype != b.dtype:
        raise ArgumentTypeError(
            f"{name_a} and {name_b} must have the same dtype, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ArgumentError(f"{name_b} is on {b.device}, expected {a.device} like {name_a}")
# ------------------------------------------------------------------ torch.func transforms


class UnsupportedTransformError(ArgumentError, NotImplementedError):
    """A function called under a ``torch.func`` transform it does not support."""


def functorch_active() -> bool:
    """Whether a ``torch.func`` transform (``grad``, ``vmap``, ``jacrev``, ``jvp``, ...) is
    active, or forward-mode AD (``torch.autograd.forward_ad.dual_level``). False while
    ``torch.compile`` traces (the check is then constant-folded away)."""
    if torch.compiler.is_compiling():
        return False
    from torch.autograd import forward_ad

    return torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0


def plain_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` under any ``torch.func`` wrappers (``vmap``'s batch, ``grad``'s tracking):
    what value checks read, so that they run on every value without a data-dependent
    branch on a transformed tensor. Only for reading values: never returned to the caller."""
    if torch.compiler.is_compiling():
        return tensor
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(tensor):
        tensor = functorch.get_unwrapped(tensor)
    return tensor


def check_no_transform(context: str, instead: str = "compute the logits and call "
                       "crossent.cross_entropy on them") -> None:
    """Raise :class:`UnsupportedTransformError` under a ``torch.func`` transform or
    forward-mode AD: for the fused and contrastive losses, whose tiled engines are
    autograd functions and custom ops with hand-written backwards only."""
    if functorch_active():
        raise UnsupportedTransformError(
            f"{context} does not support torch.func transforms (grad, vmap, jacrev, jacfwd, "
            f"jvp, hessian) or forward-mode AD: its tiled engine has a hand-written backward "
            f"only. Use loss.backward() / torch.autograd.grad, or {instead}, which supports them"
        )


def check_logit_options(label_smoothing, z_loss, softcap, logit_scale) -> tuple:
    """The cross-entropy options every front on logits shares, checked once:
    ``label_smoothing`` in [0, 1], ``z_loss`` >= 0, ``softcap`` > 0 or None/inf (no cap),
    ``logit_scale`` > 0, all finite. Returns them as floats (``softcap`` None for no cap)."""
    return (check_unit_interval("label_smoothing", label_smoothing),
            check_non_negative("z_loss", z_loss),
            check_softcap("softcap", softcap),
            check_positive("logit_scale", logit_scale, allow_none=False))


# ------------------------------------------------------------ per-item vectors


def check_id_vector(name: str, ids, length: int, device: torch.device) -> torch.Tensor:
    """Integer ids of ``length`` items (an int64 ``(length,)`` tensor on ``device``), e.g.
    the item ids of a sampled softmax. Returns them.

    Raises:
        ArgumentTypeError: not a tensor, or not int64.
        ArgumentError: a wrong shape or device.
    """
    if not isinstance(ids, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor of int64 ids, got {type(ids).__name__}")
    if ids.dtype != torch.int64:
        raise ArgumentTypeError(f"{name} must hold int64 ids, got {ids.dtype}")
    if tuple(ids.shape) != (length,):
        raise ArgumentError(f"{name} must have shape [{length}], got {list(ids.shape)}")
    if ids.device != device:
        raise ArgumentError(f"{name} is on {ids.device}, expected {device}")
    return ids


def check_finite_vector(name: str, x, length: int, device: torch.device) -> torch.Tensor:
    """A floating ``(length,)`` tensor on ``device`` whose every value is finite (e.g. the
    log sampling probabilities of a sampled softmax): eager on the CPU, a device-side
    assertion elsewhere (no host synchronisation). Returns it.

    Raises:
        ArgumentTypeError: not a floating tensor.
        ArgumentError: a wrong shape or device, or a value that is NaN or infinite.
    """
    check_floating(name, x)
    if tuple(x.shape) != (length,):
        raise ArgumentError(f"{name} must have shape [{length}], got {list(x.shape)}")
    if x.device != device:
        raise ArgumentError(f"{name} is on {x.device}, expected {device}")
    values = plain_tensor(x).detach()
    if values.device.type == "cpu" and not torch.compiler.is_compiling():
        bad = ~torch.isfinite(values)
        if bool(bad.any()):
            first = values[bad][0].item()
            raise ArgumentError(f"{name} must hold finite values, got {first} at index "
                                f"{int(bad.nonzero()[0, 0])}")
    else:
        torch._assert_async(torch.isfinite(values).all(), f"crossent: {name} must hold finite values")
    return x


def check_bool(name: str, value) -> bool:
    """A flag: ``True`` or ``False`` (not an int, not a tensor)."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_topk_teacher(indices, log_probs, num_rows: int, num_classes: int,
                       device: torch.device) -> torch.Tensor:
    """The one validator of a top-k teacher (distillation): ``indices`` an integer
    ``(N, k)`` tensor of class indices in ``[0, num_classes)``, no index twice in a row;
    ``log_probs`` a floating ``(N, k)`` tensor of log-probabilities (``<= 0``, not NaN,
    ``-inf`` allowed: probability 0) whose probabilities sum to at most 1 per row (up to
    1e-3 of rounding); ``1 <= k <= num_classes``; both on ``device``. The value checks
    run eagerly on the CPU (one host read for all of them) and as a device-side assertion
    elsewhere. Returns ``indices`` as int64.

    Raises:
        ArgumentTypeError: not tensors, or of the wrong dtypes.
        ArgumentError: wrong shapes, devices or values.
        TargetIndexError: an index out of range.
    """
    for name, t in (("teacher_topk_indices", indices), ("teacher_topk_log_probs", log_probs)):
        if not isinstance(t, torch.Tensor):
            raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device != device:
            raise ArgumentError(f"{name} is on {t.device}, expected {device}")
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise ArgumentTypeError(
            f"teacher_topk_indices must be an integer tensor of class indices, got {indices.dtype}")
    check_floating("teacher_topk_log_probs", log_probs)
    if indices.dim() != 2 or indices.shape[0] != num_rows:
        raise ArgumentError(f"teacher_topk_indices must have shape ({num_rows}, k), got "
                            f"{list(indices.shape)}")
    if log_probs.shape != indices.shape:
        raise ArgumentError(f"teacher_topk_log_probs must have teacher_topk_indices' shape "
                            f"{list(indices.shape)}, got {list(log_probs.shape)}")
    k = indices.shape[1]
    if not 1 <= k <= num_classes:
        raise ArgumentError(f"teacher_topk_indices must hold k in [1, {num_classes}] (the number "
                            f"of classes) indices per row, got k={k}")
    idx, lp = plain_tensor(indices).long(), plain_tensor(log_probs).detach()
    if idx.numel() == 0 or torch.compiler.is_compiling():
        return indices.long()
    out_of_range = ((idx < 0) | (idx >= num_classes)).any()
    ordered = idx.sort(1).values
    repeated = (ordered[:, 1:] == ordered[:, :-1]).any()
    bad_lp = ((lp > 0) | torch.isnan(lp)).any()
    over_one = (torch.logsumexp(lp.float(), 1) > 1e-3).any()
    flags = torch.stack((out_of_range, repeated, bad_lp, over_one))
    if idx.device.type != "cpu":
        torch._assert_async(~flags.any(), "crossent: invalid top-k teacher (indices out of "
                            "range or repeated in a row, or log-probabilities > 0, NaN or "
                            "summing to more than 1)")
        return indices.long()
    oor, rep, blp, over = flags.tolist()
    if oor:
        first = int(idx[(idx < 0) | (idx >= num_classes)][0])
        raise TargetIndexError(f"teacher_topk_indices holds {first}, out of bounds: indices must "
                               f"be in [0, {num_classes})")
    if rep:
        row = int(((ordered[:, 1:] == ordered[:, :-1]).any(1)).nonzero()[0])
        raise ArgumentError(f"teacher_topk_indices must not repeat an index within a row, got "
                            f"row {row}: {idx[row].tolist()}")
    if blp:
        bad = lp[(lp > 0) | torch.isnan(lp)][0].item()
        raise ArgumentError(f"teacher_topk_log_probs must be log-probabilities (<= 0, not NaN), "
                            f"got {bad}")
    if over:
        total = torch.logsumexp(lp.float(), 1).exp().max().item()
        raise ArgumentError(f"teacher_topk_log_probs must be the log-probabilities of k classes "
                            f"of one distribution (summing to at most 1), got a row summing to "
                            f"{total:.6g}")
    return indices.long()
