"""TRL's fused LM head on crossent: per-token log-probabilities and entropy without logits.

TRL (>= 1.16) trains every RL and preference model (GRPO, RLOO, DPO, KTO, SFT) through
``trl.trainer.utils.add_fused_lm_head``: the model's forward, called with
``fused_lm_head=True``, returns per-token log-probabilities (and optionally entropies)
instead of ``(batch, seq, vocab)`` logits. :func:`add_fused_lm_head` here has that
function's contract (arguments, :class:`FusedCausalLMOutput` fields, ``-100`` handling,
``shift_labels``, ``num_items_in_batch``, the soft cap and logit scale read from the
config, the MoE auxiliary loss) with :func:`crossent.linear_token_log_probs` as its
kernel; :func:`apply` makes TRL's trainers call it instead of their own.

With ``z = softcap(logit_scale * (h W^T + b)) / temperature`` and ``p = softmax(z)`` for
every position whose next-token label ``y`` is not ``-100``::

    log_probs = log p_y            entropy = -sum_v p_v log p_v
    loss      = -sum log_probs / (num_items_in_batch or the number of labelled positions)

References:
    von Werra et al., TRL: Transformer Reinforcement Learning (``add_fused_lm_head``,
    ``FusedCausalLMOutput``, TRL 1.16); Shao et al., "DeepSeekMath" (GRPO), 2024.
"""

from __future__ import annotations

import functools
import importlib
import types
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import transformers
from packaging.version import Version
from transformers.utils import ModelOutput

from ..core.checks import ArgumentError, ArgumentTypeError, check_bool, check_temperature
from ..logprobs.linear import linear_token_log_probs

__all__ = ["FusedCausalLMOutput", "add_fused_lm_head", "apply", "revert", "is_applied"]

#: The per-token fields of :class:`FusedCausalLMOutput`, in TRL's order.
OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
#: The order of :class:`crossent.logprobs.TokenLogProbs`' fields.
_FIELDS = ("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs")
#: TRL's modules that import ``add_fused_lm_head`` by name (patched by :func:`apply`).
TRAINER_MODULES = ("utils", "grpo_trainer", "rloo_trainer", "dpo_trainer", "kto_trainer",
                   "sft_trainer")


def _trl_output_class():
    """TRL's own output class when TRL is installed (trainers may check its type)."""
    try:
        from trl.trainer.utils import FusedCausalLMOutput as trl_output
    except Exception:  # TRL absent or too old: the same fields, defined here
        return None
    return trl_output


@dataclass
class _FusedCausalLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    log_probs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    log_sum_sq_probs: torch.Tensor | None = None
    mean_logits: torch.Tensor | None = None
    is_top1: torch.Tensor | None = None
    label_mask: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


#: What ``model(..., labels=labels, fused_lm_head=True)`` returns: TRL's
#: ``FusedCausalLMOutput`` when TRL is installed, else a class with its fields (``loss``,
#: the per-token fields of :data:`OUTPUTS`, ``label_mask``, ``aux_loss``); per-token
#: fields are 0 where the label is ``-100`` and None when not requested.
FusedCausalLMOutput = _trl_output_class() or _FusedCausalLMOutput


def _check_arguments(model, temperature, cast_lm_head_to_fp32, outputs) -> tuple[str, ...]:
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "get_output_embeddings"):
        raise ArgumentTypeError(
            "model must be a transformers PreTrainedModel with an output layer "
            f"(get_output_embeddings), got {type(model).__name__}")
    check_temperature("temperature", temperature)
    check_bool("cast_lm_head_to_fp32", cast_lm_head_to_fp32)
    if isinstance(outputs, str) or not all(isinstance(o, str) for o in outputs):
        raise ArgumentTypeError(f"outputs must be a tuple of field names among {OUTPUTS}, "
                                f"got {outputs!r}")
    unknown = [o for o in outputs if o not in OUTPUTS]
    if unknown:
        raise ArgumentError(f"outputs must be field names among {OUTPUTS}, got {unknown}")
    return tuple(outputs)


def _logit_scale(text_config) -> float:
    """The multiplier a model applies to its output-layer scores before the soft cap, read
    from the config under the names TRL reads (``logit_scale``, ``output_multiplier``,
    ``lm_head_multiplier``, ``1 / logits_scaling``; HyperCLOVA X multiplies by
    ``logits_scaling``); 1.0 when none is set."""
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier"):
        value = getattr(text_config, name, None)
        if value is not None:
            return float(value)
    scaling = getattr(text_config, "logits_scaling", None)
    if scaling is not None:
        return float(scaling) if text_config.model_type == "hyperclovax" else 1.0 / scaling
    return 1.0


def _gather_context():
    """DeepSpeed ZeRO-3 gathers a partitioned head for the call: TRL's context when present."""
    try:
        from trl.trainer.utils import maybe_gather_lm_head_ctx
    except Exception:
        return lambda *params: nullcontext()
    return maybe_gather_lm_head_ctx


def _aux_loss(model, text_config, backbone_outputs, attention_mask):
    """The MoE load-balancing loss, as the model's own forward (and TRL) computes it."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    if Version(transformers.__version__) < Version("5.0.0"):
        experts, per_token = model.num_experts, model.num_experts_per_tok
    else:
        experts = getattr(text_config, "num_experts", None) or model.num_experts
        per_token = text_config.num_experts_per_tok
    return load_balancing_loss_func(backbone_outputs.router_logits, experts, per_token,
                                    attention_mask)


def add_fused_lm_head(model, temperature: float = 1.0, cast_lm_head_to_fp32: bool = False,
                      outputs: tuple[str, ...] = ("log_probs",)) -> None:
    """Patch ``model`` so ``model(..., labels=labels, fused_lm_head=True)`` returns
    per-token log-probabilities from :func:`crossent.linear_token_log_probs`.

    TRL's ``add_fused_lm_head`` contract: the backbone runs, the output layer is applied
    tile by tile to the positions whose next-token label is not ``-100`` (labels are
    shifted by one unless ``shift_labels`` is passed, as under context parallelism), and
    a :class:`FusedCausalLMOutput` comes back::

        z         = softcap(logit_scale * lm_head(h)) / temperature   (never formed whole)
        log_probs = log softmax(z)[label]       entropy = -sum_v p_v log p_v
        loss      = -sum(log_probs) / (num_items_in_batch or #labelled positions)
                    (+ router_aux_loss_coef * aux_loss for MoE models asked for it)

    ``final_logit_softcapping`` and the logit scale come from the model's (text) config.
    Without ``fused_lm_head=True`` the original forward runs, so generation is unchanged.
    Add the head before wrapping the model with PEFT. The labelled positions are selected
    with a boolean mask (one host sync per call, as in TRL).

    Args:
        model: a transformers causal LM (``PreTrainedModel`` with ``get_output_embeddings``).
        temperature: a finite number ``> 0`` the scores are divided by.
        cast_lm_head_to_fp32: run the output layer in float32, outside autocast.
        outputs: the per-token fields computed, among ``"log_probs"``, ``"entropy"``,
            ``"log_sum_sq_probs"``, ``"mean_logits"``, ``"is_top1"``; ``log_probs`` (and so
            ``loss``) always. ``log_probs`` and ``entropy`` are differentiable; the other
            three carry no gradient.
    Returns:
        None; the model's ``forward`` is replaced on this instance.
    Example:
        >>> import torch, transformers
        >>> from crossent.integrations import trl as ce_trl
        >>> _ = torch.manual_seed(0)
        >>> config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(config)
        >>> ce_trl.add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
        >>> ids = torch.randint(0, 32, (2, 6))
        >>> labels = ids.clone(); labels[:, :3] = -100
        >>> out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        >>> out.log_probs.shape, bool((out.log_probs[:, :2] == 0).all())
        (torch.Size([2, 5]), True)
        >>> logits = model(input_ids=ids).logits[:, :-1] / 0.7
        >>> ref = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
        >>> torch.allclose(out.log_probs[:, 2:], ref[:, 2:], atol=1e-5)
        True
    References:
        TRL 1.16, ``trl.trainer.utils.add_fused_lm_head``.
    """
    outputs = _check_arguments(model, temperature, cast_lm_head_to_fp32, outputs)
    original_forward = model.forward
    text_config = model.config.get_text_config()
    softcap = getattr(text_config, "final_logit_softcapping", None)
    logit_scale = _logit_scale(text_config)
    # Before transformers 5, vision-language models expose their language backbone as `model`
    backbone_attr = "base_model"
    if text_config is not model.config and Version(transformers.__version__) < Version("5.0.0"):
        backbone_attr = "model"
    gather = _gather_context()
    extras = tuple(o for o in OUTPUTS[2:] if o in outputs)

    @functools.wraps(type(model).forward)  # generate() validates its kwargs against it
    def _fused_forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None,
                       num_items_in_batch=None, **kwargs):
        if not fused_lm_head:
            for name, value in (("labels", labels), ("shift_labels", shift_labels),
                                ("num_items_in_batch", num_items_in_batch)):
                if value is not None:
                    kwargs[name] = value
            return original_forward(*args, **kwargs)
        if labels is None and shift_labels is None:
            raise ArgumentError("fused_lm_head=True needs labels (or shift_labels): the "
                                "fused head returns the log-probabilities of the labels")
        kwargs["use_cache"] = False
        if getattr(text_config, "output_router_logits", False):
            kwargs.setdefault("output_router_logits", True)
        # looked up on every call: FSDP and PEFT replace the modules after patching
        backbone_outputs = getattr(self, backbone_attr)(*args, **kwargs)
        hidden = backbone_outputs.last_hidden_state
        if shift_labels is None:
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        else:
            labels = shift_labels
        lm_head = self.get_output_embeddings()
        hidden = hidden.to(lm_head.weight.device)
        labels = labels.to(lm_head.weight.device)
        mask = labels != -100
        autocast = nullcontext()
        if cast_lm_head_to_fp32:
            hidden = hidden.float()
            autocast = torch.autocast(hidden.device.type, enabled=False)
        # an FSDP2-sharded head (DTensor) is gathered by linear_token_log_probs
        weight, bias = lm_head.weight, lm_head.bias
        with autocast, gather(weight, bias):
            if cast_lm_head_to_fp32:
                weight = weight.float()
                bias = None if bias is None else bias.float()
            result = linear_token_log_probs(
                hidden[mask], weight, labels[mask], linear_bias=bias, temperature=temperature,
                softcap=softcap, logit_scale=logit_scale,
                return_entropy="entropy" in outputs, extras=extras,
            )
        if isinstance(result, torch.Tensor):
            result = (result,)
        fields = {name: value for name, value in zip(_FIELDS, result) if value is not None}
        # masked_scatter keeps an all-masked micro-batch connected to the graph
        per_token = {name: None if name not in fields else
                     fields[name].new_zeros(mask.shape).masked_scatter(mask, fields[name])
                     for name in OUTPUTS}
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        loss = -per_token["log_probs"].sum() / count
        aux_loss = None
        if kwargs.get("output_router_logits"):
            aux_loss = _aux_loss(self, text_config, backbone_outputs, kwargs.get("attention_mask"))
            loss = loss + getattr(text_config, "router_aux_loss_coef", 0.0) * aux_loss
        return FusedCausalLMOutput(loss=loss, **per_token, label_mask=mask, aux_loss=aux_loss)

    model.forward = types.MethodType(_fused_forward, model)
    model._crossent_fused_lm_head = True


# ------------------------------------------------------------------ TRL's trainers

_ORIGINALS: dict[str, object] = {}


def _trl_modules():
    try:
        importlib.import_module("trl")
    except ImportError as error:
        raise ImportError("crossent.integrations.trl.apply() needs TRL: pip install "
                          "'crossent[trl]'") from error
    found = []
    for name in TRAINER_MODULES:
        try:
            module = importlib.import_module(f"trl.trainer.{name}")
        except ImportError:  # a trainer whose optional dependencies are missing
            continue
        if hasattr(module, "add_fused_lm_head"):
            found.append(module)
    return found


def apply() -> None:
    """Make TRL's trainers (GRPO, RLOO, DPO, KTO, SFT) use crossent's fused LM head.

    Replaces the name ``add_fused_lm_head`` in ``trl.trainer.utils`` and in each trainer
    module that imported it with :func:`add_fused_lm_head`; trainers created afterwards
    compute their per-token log-probabilities and entropies with
    :func:`crossent.linear_token_log_probs`. Idempotent; :func:`revert` undoes it.

    Args:
        None.
    Returns:
        None.
    Example:
        >>> from crossent.integrations import trl as ce_trl
        >>> ce_trl.apply()
        >>> import trl.trainer.grpo_trainer as grpo
        >>> grpo.add_fused_lm_head is ce_trl.add_fused_lm_head, ce_trl.is_applied()
        (True, True)
        >>> ce_trl.revert(); ce_trl.is_applied()
        False
    References:
        TRL 1.16, ``trl.trainer.utils.add_fused_lm_head``.
    """
    for module in _trl_modules():
        current = module.add_fused_lm_head
        if current is not add_fused_lm_head:
            _ORIGINALS[module.__name__] = current
            module.add_fused_lm_head = add_fused_lm_head


def revert() -> None:
    """Give TRL's trainers back their own ``add_fused_lm_head`` (undo :func:`apply`).

    Args:
        None.
    Returns:
        None.
    Example:
        >>> from crossent.integrations import trl as ce_trl
        >>> ce_trl.apply(); ce_trl.revert()
        >>> import trl.trainer.utils as trl_utils
        >>> trl_utils.add_fused_lm_head is ce_trl.add_fused_lm_head
        False
    References:
        TRL 1.16, ``trl.trainer.utils.add_fused_lm_head``.
    """
    while _ORIGINALS:
        name, original = _ORIGINALS.popitem()
        importlib.import_module(name).add_fused_lm_head = original


def is_applied() -> bool:
    """Whether :func:`apply` is in effect.

    Args:
        None.
    Returns:
        True when TRL's trainers currently use crossent's fused LM head.
    Example:
        >>> from crossent.integrations import trl as ce_trl
        >>> ce_trl.is_applied()
        False
    References:
        TRL 1.16, ``trl.trainer.utils.add_fused_lm_head``.
    """
    return bool(_ORIGINALS)
