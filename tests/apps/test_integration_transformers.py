"""crossent.integrations.transformers: a patched Hugging Face causal LM trains on the
fused linear cross-entropy and gets exactly the loss and gradients of the unpatched model.

The oracle is independent of crossent and of transformers' own loss (which upcasts to
float32): the unpatched model's float64 logits, run through the causal-LM loss written
out below (shift by one, ignore -100, divide by the target count or num_items_in_batch).
Models are tiny random ones built from configs (nothing is downloaded).
"""

from __future__ import annotations

import copy
import inspect
import logging

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
import crossent.integrations.transformers as ce_hf  # noqa: E402
from crossent import ArgumentError, ArgumentTypeError  # noqa: E402

pytestmark = pytest.mark.slow

logging.getLogger("transformers").setLevel(logging.ERROR)
transformers.logging.set_verbosity_error()

V, H = 97, 32
_SMALL = dict(vocab_size=V, hidden_size=H, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, initializer_range=0.5,
              bos_token_id=1, eos_token_id=2, pad_token_id=0)

# name -> (config class, model class, config overrides); an architecture transformers
# lacks is skipped. Large init (0.5) puts the logits where a cap of 2 bends them.
ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2-tied": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "gemma2-softcap": ("Gemma2Config", "Gemma2ForCausalLM",
                       {"head_dim": 8, "final_logit_softcapping": 2.0}),
    "gemma3-softcap": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                       {"head_dim": 8, "final_logit_softcapping": 2.0}),
    "cohere-scale": ("CohereConfig", "CohereForCausalLM", {"logit_scale": 0.25}),
    "granite-scaling": ("GraniteConfig", "GraniteForCausalLM", {"logits_scaling": 4.0}),
    "phi-bias": ("PhiConfig", "PhiForCausalLM",
                 {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attention_dropout": 0.0}),
}


def build(arch: str, dtype=torch.float64, seed: int = 0):
    cfg_name, model_name, extra = ARCHS[arch]
    if not hasattr(transformers, model_name):
        pytest.skip(f"transformers {transformers.__version__} has no {model_name}")
    config = getattr(transformers, cfg_name)(**_SMALL, **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).to(dtype)
    model.train()
    return model


def twins(arch: str, dtype=torch.float64, **options):
    """(patched, unpatched): the same weights, only the first patched."""
    reference = build(arch, dtype)
    patched = copy.deepcopy(reference)
    assert ce_hf.apply(patched, **options) is patched
    return patched, reference


def batch(b: int = 3, t: int = 11, seed: int = 1):
    """Rows of three lengths (right padding: Gemma-2's eager attention turns the fully
    masked rows of left padding into NaN in the unpatched model), a masked prompt in row 0."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, -4:] = 0
    mask[2, -2:] = 0
    ids[mask == 0] = 0
    labels = ids.clone()
    labels[mask == 0] = -100
    labels[0, :4] = -100
    return ids, mask, labels


def reference_loss(logits, labels=None, shift_labels=None, num_items=None, ignore_index=-100,
                   label_smoothing=0.0, z_loss=0.0):
    """The causal-LM loss written out, in the logits' dtype (float64 here)."""
    if shift_labels is None:
        pad = labels.new_full((labels.shape[0], 1), ignore_index)
        shift_labels = torch.cat([labels[:, 1:], pad], 1)
    z = logits.reshape(-1, logits.shape[-1])
    t = shift_labels.reshape(-1)
    keep = t != ignore_index
    logp = z[keep] - torch.logsumexp(z[keep], -1, keepdim=True)
    nll = -logp.gather(1, t[keep, None]).squeeze(1)
    rows = (1 - label_smoothing) * nll - label_smoothing * logp.mean(-1)
    rows = rows + z_loss * torch.logsumexp(z[keep], -1) ** 2
    denom = keep.sum() if num_items is None else num_items
    return rows.sum() / denom


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(patched, reference, rtol=1e-9, atol=1e-11):
    got, want = grads(patched), grads(reference)
    assert set(got) == set(want) == {n for n, _ in reference.named_parameters()}
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=atol, msg=name)


# ------------------------------------------------------------------ exact in float64


@pytest.mark.parametrize("num_items", [None, 40, "tensor"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_loss_and_every_gradient_match_float64_reference(arch, num_items):
    patched, reference = twins(arch)
    ids, mask, labels = batch()
    if num_items == "tensor":
        num_items = torch.tensor(37)
    extra = {} if num_items is None else {"num_items_in_batch": num_items}

    out = patched(input_ids=ids, attention_mask=mask, labels=labels, **extra)
    assert out.logits is None
    assert out.loss.dtype == torch.float64
    out.loss.backward()

    logits = reference(input_ids=ids, attention_mask=mask).logits
    assert logits.dtype == torch.float64
    want = reference_loss(logits, labels, num_items=num_items)
    want.backward()
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=1e-12)
    assert_same_grads(patched, reference)


def test_the_architecture_transform_is_read_from_the_model():
    """The oracle above would pass a model without soft-capping too; check the caps bend."""
    for arch, expected in [("gemma2-softcap", (1.0, 2.0)), ("gemma3-softcap", (1.0, 2.0)),
                           ("cohere-scale", (0.25, None)), ("granite-scaling", (0.25, None)),
                           ("llama", (1.0, None))]:
        model = ce_hf.apply(build(arch))
        t = model._crossent_linear_ce.transform
        assert t.logit_scale == pytest.approx(expected[0], rel=1e-12), arch
        assert t.softcap == expected[1], arch
    gemma = build("gemma2-softcap")
    logits = gemma(*batch()[:1]).logits
    assert logits.abs().max() > 1.5  # the cap of 2 is reached, not a linear regime


def test_shift_labels_as_given():
    patched, reference = twins("llama")
    ids, mask, labels = batch()
    shift = torch.randint(0, V, labels.shape)
    shift[:, ::3] = -100
    out = patched(input_ids=ids, attention_mask=mask, labels=labels, shift_labels=shift)
    want = reference_loss(reference(input_ids=ids, attention_mask=mask).logits, shift_labels=shift)
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=0)


def test_ignore_index_passed_to_forward():
    patched, reference = twins("llama")
    ids, mask, labels = batch()
    labels[labels == -100] = 5  # a real class used as the ignore value
    out = patched(input_ids=ids, attention_mask=mask, labels=labels, ignore_index=5)
    want = reference_loss(reference(input_ids=ids, attention_mask=mask).logits, labels, ignore_index=5)
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("arch", ["llama", "gemma2-softcap", "phi-bias"])
def test_same_loss_as_transformers_own_in_float32(arch):
    """transformers' ForCausalLMLoss, the definition: equal to float32 rounding."""
    patched, reference = twins(arch, dtype=torch.float32)
    ids, mask, labels = batch()
    for extra in ({}, {"num_items_in_batch": torch.tensor(50)},
                  {"shift_labels": torch.roll(labels, -2, 1)}):
        got = patched(input_ids=ids, attention_mask=mask, labels=labels, **extra).loss
        want = reference(input_ids=ids, attention_mask=mask, labels=labels, **extra).loss
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-6)


def test_options_pass_through_label_smoothing_and_z_loss():
    patched, reference = twins("gemma2-softcap", label_smoothing=0.1, z_loss=1e-3)
    ids, mask, labels = batch()
    out = patched(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    logits = reference(input_ids=ids, attention_mask=mask).logits
    want = reference_loss(logits, labels, label_smoothing=0.1, z_loss=1e-3)
    want.backward()
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=0)
    assert_same_grads(patched, reference)


def test_tiling_options_do_not_change_the_result():
    a = ce_hf.apply(build("llama"), memory_budget=1 << 12, token_chunk_size=5, vocab_chunk_size=16)
    b = ce_hf.apply(build("llama"))
    ids, mask, labels = batch()
    torch.testing.assert_close(a(input_ids=ids, attention_mask=mask, labels=labels).loss,
                               b(input_ids=ids, attention_mask=mask, labels=labels).loss,
                               rtol=1e-12, atol=0)


def test_mixture_of_experts_keeps_its_auxiliary_loss():
    if not hasattr(transformers, "MixtralForCausalLM"):
        pytest.skip("no Mixtral")
    config = transformers.MixtralConfig(**_SMALL, num_local_experts=4, num_experts_per_tok=2,
                                        output_router_logits=True, router_aux_loss_coef=0.5)
    torch.manual_seed(0)
    reference = transformers.MixtralForCausalLM(config)  # float32: its expert matmul has no float64
    patched = ce_hf.apply(copy.deepcopy(reference))
    ids, mask, labels = batch()
    out = patched(input_ids=ids, attention_mask=mask, labels=labels)
    ref = reference(input_ids=ids, attention_mask=mask)
    want = reference_loss(ref.logits.double(), labels) + 0.5 * ref.aux_loss.double()
    assert out.aux_loss is not None and out.aux_loss > 0
    torch.testing.assert_close(out.loss.double(), want, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------- outputs and modes


def test_without_labels_the_forward_is_unchanged():
    patched, reference = twins("gemma2-softcap")
    ids, mask, _ = batch()
    got = patched(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    want = reference(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert torch.equal(got.logits, want.logits) and got.logits.shape == (3, 11, V)
    assert got.loss is None
    assert all(torch.equal(a, b) for a, b in zip(got.hidden_states, want.hidden_states))


def test_generation_is_unchanged():
    patched, reference = twins("qwen2-tied")
    patched.eval(), reference.eval()
    ids = batch()[0][:1, :5]
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(patched.generate(ids, **kwargs), reference.generate(ids, **kwargs))


def test_logits_are_never_formed():
    model = ce_hf.apply(build("llama"))
    shapes = []
    model.lm_head.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    ids, mask, labels = batch()
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    assert shapes == [(3, 11, 0)]  # the placeholder, not (3, 11, V)
    model(input_ids=ids)
    assert shapes[-1] == (3, 11, V)


def test_output_fields_and_return_dict_false():
    patched, reference = twins("llama")
    ids, mask, labels = batch()
    out = patched(input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True)
    assert type(out) is transformers.modeling_outputs.CausalLMOutputWithPast
    assert out.logits is None and "logits" not in out and out.hidden_states is not None
    tup = patched(input_ids=ids, attention_mask=mask, labels=labels, return_dict=False)
    assert isinstance(tup, tuple)
    torch.testing.assert_close(tup[0], out.loss, rtol=0, atol=0)
    # the model's own to_tuple() drops None fields: what follows the loss is the cache
    ref = reference(input_ids=ids, attention_mask=mask, labels=labels, return_dict=False)
    assert len(tup) == len(ref) - 1


def test_positional_labels():
    patched, reference = twins("llama")
    ids, mask, labels = batch()
    out = patched(ids, mask, None, None, None, labels)
    assert out.logits is None
    torch.testing.assert_close(out.loss, reference_loss(reference(ids, mask).logits, labels),
                               rtol=1e-12, atol=0)


def test_logits_to_keep_behaves_as_the_model():
    patched, reference = twins("llama")
    ids, mask, labels = batch()
    shift = torch.randint(0, V, (3, 4))
    out = patched(input_ids=ids, attention_mask=mask, labels=labels, shift_labels=shift, logits_to_keep=4)
    logits = reference(input_ids=ids, attention_mask=mask, logits_to_keep=4).logits
    torch.testing.assert_close(out.loss, reference_loss(logits, shift_labels=shift), rtol=1e-12, atol=0)
    # labels for every position with 4 kept logits: an error in both
    with pytest.raises(ArgumentError, match="lm_head saw 12 positions"):
        patched(input_ids=ids, labels=labels, logits_to_keep=4)
    with pytest.raises(ValueError):
        reference(input_ids=ids, labels=labels, logits_to_keep=4)
    # logits_to_keep without labels: the model's own
    assert patched(input_ids=ids, logits_to_keep=1).logits.shape == (3, 1, V)


def test_eval_logits_option():
    model = ce_hf.apply(build("llama"), eval_logits=True)
    ids, mask, labels = batch()
    assert model(input_ids=ids, labels=labels).logits is None  # training: fused
    model.eval()
    out = model(input_ids=ids, labels=labels)
    assert out.logits.shape == (3, 11, V) and out.loss is not None
    default = ce_hf.apply(build("llama")).eval()
    assert default(input_ids=ids, labels=labels).logits is None


def test_autocast_bf16_runs_the_head_in_bf16():
    patched, reference = twins("llama", dtype=torch.float32)
    ids, mask, labels = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = patched(input_ids=ids, attention_mask=mask, labels=labels).loss
        want = reference(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    got.backward()
    assert patched.lm_head.weight.grad.dtype == torch.float32


# ------------------------------------------------------------- one instance, revert


def test_patches_one_instance_only():
    patched, other = twins("llama")
    cls = type(other)
    assert "forward" in vars(patched) and "forward" not in vars(other)
    assert cls.forward is transformers.LlamaForCausalLM.forward
    ids, _, labels = batch()
    assert other(input_ids=ids, labels=labels).logits is not None
    assert ce_hf.is_applied(patched) and not ce_hf.is_applied(other)
    # Trainer reads the signature to keep dataset columns and pass num_items_in_batch
    assert inspect.signature(patched.forward) == inspect.signature(other.forward)


def test_revert_and_apply_twice():
    model = ce_hf.apply(build("llama"), z_loss=1.0)
    ids, _, labels = batch()
    ce_hf.apply(model)  # again: replaces the options, no double wrap
    assert model._crossent_linear_ce.options == {}
    ce_hf.revert(model)
    assert "forward" not in vars(model) and not ce_hf.is_applied(model)
    assert model(input_ids=ids, labels=labels).logits.shape == (3, 11, V)
    with pytest.raises(ArgumentError, match="not patched"):
        ce_hf.revert(model)


def test_a_deep_copy_stays_patched_on_its_own_weights():
    model = ce_hf.apply(build("llama"))
    twin = copy.deepcopy(model)
    assert ce_hf.is_applied(twin) and twin.forward.__self__ is twin
    ids, _, labels = batch()
    twin(input_ids=ids, labels=labels).loss.backward()
    assert twin.lm_head.weight.grad is not None and model.lm_head.weight.grad is None


def test_gradient_checkpointing():
    patched, reference = twins("qwen2-tied")
    for model in (patched, reference):  # transformers 5 renamed it
        enable = getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)
        enable()
    ids, mask, labels = batch()
    out = patched(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    want = reference_loss(reference(input_ids=ids, attention_mask=mask).logits, labels)
    want.backward()
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=0)
    assert_same_grads(patched, reference)


def test_apply_leaves_rng_and_modes_alone():
    model = build("llama")
    model.model.layers[0].eval()
    before = torch.random.get_rng_state()
    ce_hf.apply(model)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training


# ------------------------------------------------------------------------ training


def _train_steps(model, written_out=False, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ids, mask, labels = batch()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        if written_out:
            loss = reference_loss(model(input_ids=ids, attention_mask=mask).logits, labels)
        else:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_plain_pytorch_loop():
    patched, reference = twins("gemma2-softcap")
    got, want = _train_steps(patched), _train_steps(reference, written_out=True)
    assert got[-1] < got[0]
    assert got == pytest.approx(want, rel=1e-12)
    for (name, p), q in zip(patched.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11, msg=name)


def test_trainer_runs_and_matches_the_unpatched_model(tmp_path, monkeypatch):
    pytest.importorskip("accelerate")
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    calls = []
    fused = ce_hf.linear_cross_entropy
    monkeypatch.setattr(ce_hf, "linear_cross_entropy",
                        lambda *a, **k: calls.append(k.get("reduction")) or fused(*a, **k))
    ids, mask, labels = batch(b=8, t=10, seed=3)
    data = [{"input_ids": i, "attention_mask": m, "labels": y} for i, m, y in zip(ids, mask, labels)]
    results = {}
    for name in ("patched", "reference"):
        model = build("llama")
        if name == "patched":
            model = ce_hf.apply(model)
            calls.clear()  # apply() checked its options with one small call
        args = TrainingArguments(
            output_dir=str(tmp_path / name), max_steps=3, per_device_train_batch_size=2,
            gradient_accumulation_steps=2, learning_rate=1e-3, report_to="none",
            save_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=True,
            dataloader_num_workers=0, seed=0,
        )
        # the reference: Trainer's own custom-loss hook with the loss written out in float64
        counts = []
        written_out = None if name == "patched" else (
            lambda outputs, labels, num_items_in_batch: counts.append(int(num_items_in_batch))
            or reference_loss(outputs.logits, labels, num_items=num_items_in_batch))
        trainer = Trainer(model=model, args=args, train_dataset=data, compute_loss_func=written_out)
        trainer.remove_callback(PrinterCallback)  # quiet
        out = trainer.train()
        results[name] = (out.training_loss, {n: p.detach().clone() for n, p in model.named_parameters()})
    # Trainer passed num_items_in_batch: the fused loss ran as a sum, 2 micro-batches x 3 steps
    assert calls == ["sum"] * 6
    assert len(counts) == 6 and counts[0] == counts[1] > 0  # one count for both micro-batches
    assert results["patched"][0] == pytest.approx(results["reference"][0], rel=1e-12)
    for name, want in results["reference"][1].items():
        torch.testing.assert_close(results["patched"][1][name], want, rtol=1e-9, atol=1e-11, msg=name)


# -------------------------------------------------------------------------- errors


def test_not_a_module():
    with pytest.raises(ArgumentTypeError, match="torch.nn.Module"):
        ce_hf.apply("gpt2")


def test_model_without_output_layer_names_it():
    with pytest.raises(ArgumentError, match="get_output_embeddings.*'lm_head'"):
        ce_hf.apply(nn.Linear(3, 4))
    base = transformers.LlamaModel(transformers.LlamaConfig(**_SMALL))
    with pytest.raises(ArgumentError, match="lm_head"):
        ce_hf.apply(base)


def test_output_layer_that_is_not_linear():
    model = build("llama")
    model.lm_head = nn.Sequential(model.lm_head)
    with pytest.raises(ArgumentError, match="Sequential, not a torch.nn.Linear"):
        ce_hf.apply(model)


def test_custom_loss_function_is_refused():
    model = build("llama")
    model.loss_function = lambda *a, **k: torch.zeros(())
    with pytest.raises(ArgumentError, match="not transformers' ForCausalLMLoss"):
        ce_hf.apply(model)


def test_model_that_computes_its_loss_inline_is_refused():
    class InlineLoss(transformers.LlamaForCausalLM):
        def forward(self, input_ids=None, labels=None, **kwargs):
            out = super().forward(input_ids=input_ids, **kwargs)
            if labels is not None:
                out["loss"] = nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(),
                                                          labels[:, 1:].flatten())
            return out

    torch.manual_seed(0)
    model = InlineLoss(transformers.LlamaConfig(**_SMALL))
    with pytest.raises(ArgumentError, match="called self.loss_function 0 times"):
        ce_hf.apply(model)


@pytest.mark.parametrize("hook, message", [
    (lambda m, i, o: o + 1.0, "cannot reproduce"),            # an offset
    (lambda m, i, o: o[..., :-1], "selects or adds logits"),   # a vocabulary slice
    (lambda m, i, o: o.abs(), "cannot reproduce"),             # not odd
])
def test_other_logit_transforms_are_refused(hook, message):
    model = build("llama")
    model.lm_head.register_forward_hook(hook)
    with pytest.raises(ArgumentError, match=message):
        ce_hf.apply(model)
    assert not ce_hf.is_applied(model) and "forward" not in vars(model.lm_head)


@pytest.mark.parametrize("options, message", [
    ({"reduction": "sum"}, "does not take 'reduction'"),
    ({"softcap": 30.0}, "read from the model"),
    ({"ignore_index": 0}, "ForCausalLMLoss"),
    ({"lable_smoothing": 0.1}, "unknown option 'lable_smoothing'"),
    ({"label_smoothing": 2.0}, "label_smoothing must be between"),
    ({"weight": torch.ones(3, dtype=torch.float64)}, "weight tensor should be defined"),
])
def test_bad_options(options, message):
    with pytest.raises(ArgumentError, match=message):
        ce_hf.apply(build("llama"), **options)


def test_meta_device_model():
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**_SMALL))
    with pytest.raises(ArgumentError, match="meta"):
        ce_hf.apply(model)


# ----------------------------------------------------------------------- the bench


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_bench_hf_suite_tiny(arch, tmp_path, capsys):
    import argparse
    import json

    from crossent.bench import command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    out = tmp_path / "r.json"
    args = parser.parse_args(["hf", "--set", f"arch={arch}", "v=64", "h=32", "heads=2", "intermediate=64",
                              "seq=16", "--reps", "1", "--warmup", "1", "--json", str(out)])
    assert command.run(args) == 0
    assert "case default" in capsys.readouterr().out
    (suite,) = json.loads(out.read_text())["suites"]
    assert {r["impl"] for r in suite["results"]} == {"crossent", "transformers"}
    assert all("error" not in r and r["median_s"] > 0 for r in suite["results"])
