"""One line to train a Hugging Face causal LM with the fused linear cross-entropy.

    import crossent.integrations.transformers as ce_hf
    model = ce_hf.apply(AutoModelForCausalLM.from_config(config))   # or from_pretrained

After :func:`apply`, a forward with ``labels`` computes the causal-LM loss from the hidden
states the model feeds its output layer and that layer's weight (and bias) with
:func:`crossent.linear_cross_entropy`, so the ``tokens x vocab`` logits never exist. The
loss is the one transformers' ``ForCausalLMLoss`` defines::

    t_i  = labels[i + 1]  (ignore_index past the end), or shift_labels[i] when given
    loss = sum_{i: t_i != ignore_index} CE(g(W h_i + b), t_i) / D
    D    = num_items_in_batch when given (Trainer's gradient-accumulation count),
           else the number of non-ignored targets

where ``g`` is what the model does to its scores (Gemma-2/3's soft cap, Cohere's scale;
see :mod:`crossent.integrations._logit_transform`). It is computed in the model's dtype
with float32 accumulation (float64 models stay float64); under ``torch.autocast`` the
head runs in the autocast dtype, as ``nn.Linear`` would. Padding needs nothing: as in
transformers, padded positions carry ``ignore_index`` labels and ``attention_mask`` acts on
the hidden states. The returned output is the model's own, with ``logits=None``.

How it stays generic: the patch only swaps two things for the duration of a forward with
labels: the output layer (``get_output_embeddings()``, an ``nn.Linear``) records its input
and returns an empty ``(..., 0)`` placeholder, and ``model.loss_function`` becomes the
fused loss. Everything else (base model, hidden-state scaling, ``logits_to_keep``, MoE
auxiliary losses, the output class) is the model's own code. At :func:`apply` time a
4-token probe forward checks that the model computes its loss through
``self.loss_function`` on an elementwise scale/soft-cap of the head's scores, and reads
that scale/cap; a model that does anything else is refused with an error saying what,
never trained on a different loss or silently given full logits.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import types
from dataclasses import dataclass

import torch
from torch import nn

from ..core.checks import ArgumentError, ArgumentTypeError
from ..core.statistics import ScoreTransform
from ..linear.front import linear_cross_entropy
from ._logit_transform import fit_score_transform, probe_scores

__all__ = ["apply", "revert", "is_applied"]

_STATE = "_crossent_linear_ce"
_PROBE_TOKENS = 4

#: linear_cross_entropy options the model decides, with the reason given when passed.
_FIXED = {
    "linear_bias": "the bias is the model's lm_head.bias",
    "reduction": "the loss is the model's: a mean over targets, or a sum over num_items_in_batch",
    "ignore_index": "it is ForCausalLMLoss's: -100, or the ignore_index passed to forward",
    "softcap": "it is read from the model (its final_logit_softcapping, if any)",
    "logit_scale": "it is read from the model (its logit scale, if any)",
    "return_stats": "the model's output has no place for them",
    "options": "it is an argument of PyTorch's F.linear_cross_entropy, ignored",
}


@dataclass
class _Patch:
    """What a patched instance remembers (stored on the model as ``_crossent_linear_ce``)."""

    forward: object  # the forward it had before (an instance attribute), or None (the class's)
    signature: inspect.Signature
    transform: ScoreTransform
    options: dict
    eval_logits: bool


def is_applied(model) -> bool:
    """Whether :func:`apply` patched this instance.

    ::

        is_applied(model) = model carries apply()'s record (``_crossent_linear_ce``)

    Args:
        model: any ``nn.Module``.
    Returns:
        A bool.
    Example:
        >>> import torch, transformers
        >>> from crossent.integrations import transformers as ce_hf
        >>> _ = torch.manual_seed(0)
        >>> config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(config)
        >>> ce_hf.is_applied(model)
        False
        >>> ce_hf.is_applied(ce_hf.apply(model))
        True

    References:
        Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", 2024;
        Hugging Face transformers, ``ForCausalLMLoss``.
    """
    return isinstance(getattr(model, _STATE, None), _Patch)


def apply(model, *, eval_logits: bool = False, **options):
    """Patch ``model`` (this instance only) to train with :func:`crossent.linear_cross_entropy`.

    ::

        loss = linear_cross_entropy(h[:, :-1], lm_head.weight, labels[:, 1:], **options)

    the model's own shifted causal-LM loss, with the logits never formed in training
    (``outputs.logits`` is None then).

    ``model``: a transformers causal LM (``...ForCausalLM``, or any ``PreTrainedModel``
    whose head is an ``nn.Linear`` output layer over its last hidden state and whose loss
    is ``ForCausalLMLoss``). ``options`` go to :func:`crossent.linear_cross_entropy`:
    ``label_smoothing``, ``z_loss``, ``weight`` (per-class, ``(V,)``), ``all_ignored``,
    ``memory_budget``, ``token_chunk_size``, ``vocab_chunk_size``, ``backend``.
    ``eval_logits=True`` leaves forwards in eval mode (``model.training`` False) to the
    model's own head and loss, for evaluation code that wants logits with its loss
    (Trainer's ``compute_metrics``).

    Args:
        model: the transformers model to patch.
        eval_logits: in eval mode, leave the forward to the model's own head and loss.
        **options: keyword arguments of :func:`crossent.linear_cross_entropy` (above).
    Shape:
        as the model's forward: ``input_ids`` and ``labels`` ``(B, T)``.
    Returns:
        ``model``. Applying again replaces the options. :func:`revert` undoes it.
        Raises :class:`crossent.ArgumentError` / :class:`crossent.ArgumentTypeError` naming
        what is missing for a model it cannot patch, and for options it cannot take.
    Example:
        >>> import torch, transformers
        >>> from crossent.integrations import transformers as ce_hf
        >>> _ = torch.manual_seed(0)
        >>> config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(config)
        >>> ids = torch.randint(0, 32, (2, 6))
        >>> expected = model(input_ids=ids, labels=ids).loss
        >>> out = ce_hf.apply(model)(input_ids=ids, labels=ids)
        >>> torch.allclose(out.loss, expected, atol=1e-6), out.logits is None
        (True, True)

    References:
        Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", 2024;
        Hugging Face transformers, ``ForCausalLMLoss``.
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module (a transformers causal LM), "
                                f"got {type(model).__name__}")
    if is_applied(model):
        revert(model)
    head = output_layer(model)
    _check_loss_function(model)
    signature = _forward_signature(model)
    options = _check_options(options, head)
    transform = _probe_transform(model, head, signature)
    patch = _Patch(vars(model).get("forward"), signature, transform, options, bool(eval_logits))
    original = type(model).forward

    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        return _patched_forward(self, *args, **kwargs)

    setattr(model, _STATE, patch)
    model.forward = types.MethodType(forward, model)
    return model


def revert(model):
    """Undo :func:`apply` on ``model``: its forward is the one it had before.

    ::

        revert(apply(model)) behaves as model

    Args:
        model: a model :func:`apply` patched.
    Returns:
        ``model``; raises :class:`crossent.ArgumentError` for a model that is not patched.
    Example:
        >>> import torch, transformers
        >>> from crossent.integrations import transformers as ce_hf
        >>> _ = torch.manual_seed(0)
        >>> config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(config)
        >>> ce_hf.is_applied(ce_hf.revert(ce_hf.apply(model)))
        False

    References:
        Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", 2024;
        Hugging Face transformers, ``ForCausalLMLoss``.
    """
    patch = getattr(model, _STATE, None)
    if not isinstance(patch, _Patch):
        raise ArgumentError(f"model ({type(model).__name__}) is not patched by crossent")
    del model.__dict__["forward"]
    if patch.forward is not None:
        model.forward = patch.forward
    delattr(model, _STATE)
    return model


# ------------------------------------------------------------------ what is patched


def output_layer(model) -> nn.Linear:
    """The model's output layer: ``model.get_output_embeddings()``, else ``model.lm_head``."""
    name = type(model).__name__
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if head is None:
        head = getattr(model, "lm_head", None)
    if head is None:
        raise ArgumentError(
            f"{name} has no output layer: model.get_output_embeddings() "
            f"{'returned None' if callable(getter) else 'does not exist'} and it has no "
            "attribute 'lm_head'; crossent patches causal LMs whose head is an nn.Linear"
        )
    if not isinstance(head, nn.Linear) or type(head).forward is not nn.Linear.forward:
        raise ArgumentError(
            f"{name}'s output layer is a {type(head).__name__}, not a torch.nn.Linear: "
            "crossent forms its scores tile by tile from weight (and bias) only"
        )
    return head


def _check_loss_function(model) -> None:
    name = type(model).__name__
    prop = getattr(type(model), "loss_function", None)
    if not isinstance(prop, property) or prop.fset is None:
        raise ArgumentError(
            f"{name} has no settable attribute 'loss_function' (a transformers PreTrainedModel "
            "of transformers >= 4.56 has one): crossent replaces the model's loss through it"
        )
    from transformers.loss.loss_utils import ForCausalLMLoss

    if model.loss_function is not ForCausalLMLoss:
        current = getattr(model.loss_function, "__name__", type(model.loss_function).__name__)
        raise ArgumentError(
            f"{name}.loss_function is {current}, not transformers' ForCausalLMLoss: crossent "
            "replaces only the causal-LM loss (a custom loss_function would be dropped)"
        )


def _forward_signature(model) -> inspect.Signature:
    signature = inspect.signature(type(model).forward)
    if "labels" not in signature.parameters:
        raise ArgumentError(f"{type(model).__name__}.forward takes no argument 'labels'")
    return signature


def _check_options(options: dict, head: nn.Linear) -> dict:
    known = inspect.signature(linear_cross_entropy).parameters
    for key in options:
        if key in _FIXED:
            raise ArgumentError(f"apply() does not take {key!r}: {_FIXED[key]}")
        if key not in known or known[key].kind != inspect.Parameter.KEYWORD_ONLY:
            allowed = sorted(k for k, p in known.items()
                             if p.kind == inspect.Parameter.KEYWORD_ONLY and k not in _FIXED)
            raise ArgumentError(f"apply() got an unknown option {key!r}; options of "
                                f"crossent.linear_cross_entropy it takes: {allowed}")
    # Validate the values now, on a (1, 1) problem with the head's classes, dtype and device.
    w = head.weight
    with torch.no_grad():
        linear_cross_entropy(w.new_zeros(1, 1), w.new_zeros(w.shape[0], 1),
                             torch.zeros(1, dtype=torch.long, device=w.device), **options)
    return dict(options)


# ------------------------------------------------------------- swapping, per forward


class _Swap:
    """For one forward: the head records its input and returns ``head_output(h)``; the
    model's ``loss_function`` is ``loss``. Counts the calls of both."""

    def __init__(self, model, head, head_output, loss):
        self.model, self.head, self.head_output, self.loss = model, head, head_output, loss
        self.hidden = None
        self.head_calls = self.loss_calls = 0

    def _head_forward(self, hidden):
        self.head_calls += 1
        self.hidden = hidden
        return self.head_output(hidden)

    def _loss_function(self, *args, **kwargs):
        self.loss_calls += 1
        return self.loss(self, *args, **kwargs)

    @contextlib.contextmanager
    def active(self):
        model, head = self.model, self.head
        head_had = "forward" in vars(head)
        head_before = vars(head).get("forward")
        loss_had = "_loss_function" in vars(model)
        loss_before = vars(model).get("_loss_function")
        head.forward = self._head_forward
        model.loss_function = self._loss_function
        try:
            yield self
        finally:
            del head.__dict__["forward"]
            if head_had:
                head.forward = head_before
            model.__dict__.pop("_loss_function", None)
            if loss_had:
                model.loss_function = loss_before


def _placeholder(hidden: torch.Tensor) -> torch.Tensor:
    """Stands in for the logits: the right leading shape, no classes, no memory."""
    return hidden.new_empty((*hidden.shape[:-1], 0))


def _call(model, patch: _Patch, *args, **kwargs):
    if patch.forward is not None:
        return patch.forward(*args, **kwargs)
    return type(model).forward(model, *args, **kwargs)


def _accepts(signature: inspect.Signature, name: str) -> bool:
    params = signature.parameters
    return name in params or any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())


# --------------------------------------------------------------------- the probe


def _probe_transform(model, head: nn.Linear, signature: inspect.Signature) -> ScoreTransform:
    """Run the model on 4 tokens with its head's output replaced by known float64 scores,
    and fit the elementwise transform its loss receives them through."""
    name = type(model).__name__
    device = head.weight.device
    if device.type == "meta":
        raise ArgumentError(f"{name}'s lm_head.weight is on the meta device; apply() needs the "
                            "real weights (load or materialise the model first)")
    scores = probe_scores(_PROBE_TOKENS * head.out_features, device).view(1, _PROBE_TOKENS, -1)
    seen = {}

    def loss(swap, logits, labels, *args, **kwargs):
        seen["logits"] = logits
        return scores.new_zeros(())

    ids = torch.zeros((1, _PROBE_TOKENS), dtype=torch.long, device=device)
    kwargs = {"input_ids": ids, "labels": ids}
    for key, value in (("use_cache", False), ("return_dict", True)):
        if _accepts(signature, key):
            kwargs[key] = value
    modes = [(m, m.training) for m in model.modules()]
    swap = _Swap(model, head, lambda h: scores, loss)
    rng_devices = [device] if device.type == "cuda" else []
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=rng_devices), swap.active():
            type(model).forward(model, **kwargs)
    except ArgumentError:
        raise
    except Exception as exc:  # the model's own error, with what crossent was doing
        raise ArgumentError(f"apply() could not run {name} on a 4-token probe to read how it "
                            f"turns lm_head's scores into its loss: {type(exc).__name__}: {exc}") from exc
    finally:
        for m, mode in modes:
            m.training = mode
    _check_calls(name, swap)
    return fit_score_transform(scores, seen["logits"], what=name)


def _check_calls(name: str, swap: _Swap) -> None:
    if swap.head_calls != 1:
        raise ArgumentError(f"{name}.forward called its output layer {swap.head_calls} times "
                            "(crossent replaces exactly one call of lm_head)")
    if swap.loss_calls != 1:
        raise ArgumentError(f"{name}.forward called self.loss_function {swap.loss_calls} times "
                            "with labels (crossent replaces exactly one ForCausalLMLoss call)")


# ------------------------------------------------------------ the patched forward


def _patched_forward(self, *args, **kwargs):
    patch: _Patch = getattr(self, _STATE)
    labels = patch.signature.bind_partial(self, *args, **kwargs).arguments.get("labels")
    if labels is None or (patch.eval_logits and not self.training):
        return _call(self, patch, *args, **kwargs)
    return_dict = kwargs.get("return_dict")
    if return_dict is None:
        return_dict = getattr(getattr(self, "config", None), "return_dict", True)
    if _accepts(patch.signature, "return_dict"):
        kwargs["return_dict"] = True
    swap = _Swap(self, output_layer(self), _placeholder,
                 lambda swap, *a, **k: _fused_loss(patch, swap.head, swap.hidden, *a, **k))
    with swap.active():
        out = _call(self, patch, *args, **kwargs)
    _check_calls(type(self).__name__, swap)
    if not hasattr(out, "to_tuple") or "loss" not in out:
        raise ArgumentError(f"{type(self).__name__}.forward returned a {type(out).__name__} "
                            "without a loss; crossent expects a transformers ModelOutput")
    out = type(out)(**{k: v for k, v in out.items() if k != "logits"})
    return out if return_dict else out.to_tuple()


def _fused_loss(patch: _Patch, head: nn.Linear, hidden: torch.Tensor, logits, labels,
                vocab_size=None, num_items_in_batch=None, ignore_index: int = -100,
                shift_labels=None, **kwargs):
    """ForCausalLMLoss's signature and semantics, from the hidden states ``head`` saw."""
    if shift_labels is None:
        labels = labels.to(hidden.device)
        shift_labels = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    rows = hidden.numel() // hidden.shape[-1]
    if shift_labels.numel() != rows:
        raise ArgumentError(
            f"the labels give {shift_labels.numel()} targets (shape {list(shift_labels.shape)}) "
            f"but lm_head saw {rows} positions (hidden states of shape {list(hidden.shape)}; "
            "with logits_to_keep, pass shift_labels for the kept positions)"
        )
    x = hidden.reshape(rows, hidden.shape[-1])
    target = shift_labels.reshape(rows).to(x.device)
    weight, bias = head.weight, head.bias
    autocast = torch.is_autocast_enabled(x.device.type)
    if autocast:  # what nn.Linear does under autocast: the matmul in the autocast dtype
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    reduction = "mean" if num_items_in_batch is None else "sum"
    with torch.autocast(x.device.type, enabled=False) if autocast else contextlib.nullcontext():
        loss = linear_cross_entropy(
            x, weight, target, linear_bias=bias, reduction=reduction, ignore_index=ignore_index,
            softcap=patch.transform.softcap, logit_scale=patch.transform.logit_scale,
            **patch.options,
        )
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss
