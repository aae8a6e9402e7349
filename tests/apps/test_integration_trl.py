"""crossent.integrations.trl against TRL's own fused LM head and its trainers.

Oracles: TRL 1.16's ``add_fused_lm_head`` (its chunked PyTorch kernel on the CPU) on a
copy of the same model, a float64 log-softmax over the model's own logits, and one
``GRPOTrainer`` / ``DPOTrainer`` step run with TRL's head and again after ``apply()``.
The models and the tokenizer are built here from configs; nothing is downloaded.
"""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("trl")
trl_utils = pytest.importorskip("trl.trainer.utils")
if not hasattr(trl_utils, "add_fused_lm_head"):
    pytest.skip("this TRL has no add_fused_lm_head (TRL >= 1.16)", allow_module_level=True)

from crossent.core.checks import ArgumentError, ArgumentTypeError  # noqa: E402
from crossent.integrations import trl as ce_trl  # noqa: E402

V = 48
WORDS = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(V - 3)]


def _qwen(seed=0, **extra):
    torch.manual_seed(seed)
    config = transformers.Qwen2Config(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=None, **extra)
    return transformers.Qwen2ForCausalLM(config)


def _with_bias(model):
    """The output layer given a bias (TRL and crossent both pass it to the kernel)."""
    head = model.get_output_embeddings()
    head.bias = torch.nn.Parameter(torch.randn(head.out_features) * 0.5)
    return model


def _pair(model):
    """Two copies of ``model``: one with TRL's fused head, one with crossent's."""
    return copy.deepcopy(model), copy.deepcopy(model)


def _batch(seed=1, b=3, t=9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (b, t), generator=g)
    labels = ids.clone()
    labels[0, :4] = -100  # a prompt
    labels[2, :] = -100   # a row with nothing to score
    labels[1, -2:] = -100  # padding
    return ids, labels


def _grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _close(a, b, what, rtol=2e-5, atol=2e-6):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


ALL = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("bias", [False, True])
def test_every_field_equals_trls_own_head(temperature, bias):
    base = _qwen()
    if bias:
        base = _with_bias(base)
    theirs, ours = _pair(base)
    trl_utils.add_fused_lm_head(theirs, temperature=temperature, outputs=ALL)
    ce_trl.add_fused_lm_head(ours, temperature=temperature, outputs=ALL)
    ids, labels = _batch()
    out_t = theirs(input_ids=ids, labels=labels, fused_lm_head=True)
    out_o = ours(input_ids=ids, labels=labels, fused_lm_head=True)
    assert type(out_o) is type(out_t)
    for name in ALL:
        _close(getattr(out_o, name).float(), getattr(out_t, name).float(), name)
    assert torch.equal(out_o.label_mask, out_t.label_mask)
    _close(out_o.loss, out_t.loss, "loss")
    # gradients through both differentiable fields, with unequal weights
    w = torch.randn(out_t.log_probs.shape, generator=torch.Generator().manual_seed(3))
    (out_t.loss + (out_t.entropy * w).sum() + (out_t.log_probs * w).sum()).backward()
    (out_o.loss + (out_o.entropy * w).sum() + (out_o.log_probs * w).sum()).backward()
    gt, go = _grads(theirs), _grads(ours)
    assert gt.keys() == go.keys() and "lm_head.weight" in go
    for k in gt:
        _close(go[k], gt[k], f"grad {k}", rtol=1e-4, atol=1e-6)


def test_log_probs_equal_a_float64_log_softmax_of_the_models_logits():
    model = _qwen(seed=4)
    ce_trl.add_fused_lm_head(model, temperature=0.6, outputs=("log_probs", "entropy"))
    ids, labels = _batch(seed=5)
    out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].double() / 0.6
    logp = torch.log_softmax(logits, -1)
    y = labels[:, 1:]
    mask = y != -100
    ref = logp.gather(-1, y.clamp(min=0)[..., None])[..., 0] * mask
    ent = -(logp.exp() * logp).sum(-1) * mask
    _close(out.log_probs.double(), ref, "log_probs", rtol=1e-5, atol=1e-6)
    _close(out.entropy.double(), ent, "entropy", rtol=1e-5, atol=1e-6)
    assert bool((out.log_probs <= 0).all())
    assert out.log_sum_sq_probs is None and out.mean_logits is None and out.is_top1 is None
    _close(out.loss.double(), -ref.sum() / mask.sum(), "loss")


def test_shift_labels_num_items_and_no_flag():
    theirs, ours = _pair(_qwen(seed=6))
    trl_utils.add_fused_lm_head(theirs)
    ce_trl.add_fused_lm_head(ours)
    ids, labels = _batch(seed=7)
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    for kw in ({"shift_labels": shifted}, {"labels": labels, "num_items_in_batch": torch.tensor(7)}):
        out_t = theirs(input_ids=ids, fused_lm_head=True, **kw)
        out_o = ours(input_ids=ids, fused_lm_head=True, **kw)
        assert out_o.log_probs.shape == out_t.log_probs.shape
        _close(out_o.log_probs, out_t.log_probs, f"log_probs {list(kw)}")
        _close(out_o.loss, out_t.loss, f"loss {list(kw)}")
    # without fused_lm_head the model's own forward runs (logits, its own loss)
    plain = ours(input_ids=ids, labels=labels)
    assert plain.logits.shape == (3, 9, V)
    _close(plain.loss, theirs(input_ids=ids, labels=labels).loss, "model's own loss")


@pytest.mark.parametrize("attrs", [{"final_logit_softcapping": 3.0},
                                   {"logits_scaling": 4.0},
                                   {"final_logit_softcapping": 2.0, "logit_scale": 1.5}])
def test_softcap_and_logit_scale_read_from_the_config(attrs):
    base = _qwen(seed=8)
    for k, v in attrs.items():
        setattr(base.config, k, v)
    theirs, ours = _pair(base)
    trl_utils.add_fused_lm_head(theirs, temperature=0.8, outputs=ALL)
    ce_trl.add_fused_lm_head(ours, temperature=0.8, outputs=ALL)
    ids, labels = _batch(seed=9)
    out_t = theirs(input_ids=ids, labels=labels, fused_lm_head=True)
    out_o = ours(input_ids=ids, labels=labels, fused_lm_head=True)
    for name in ALL:
        _close(getattr(out_o, name).float(), getattr(out_t, name).float(), f"{name} {attrs}")


def test_all_labels_ignored_gives_a_zero_loss_connected_to_the_graph():
    model = _qwen(seed=10)
    ce_trl.add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    ids, _ = _batch()
    out = model(input_ids=ids, labels=torch.full_like(ids, -100), fused_lm_head=True)
    assert float(out.loss) == 0.0 and bool((out.log_probs == 0).all())
    out.loss.backward()  # a differentiable zero, as in TRL
    assert all(p.grad is None or bool((p.grad == 0).all()) for p in model.parameters())


def test_bad_arguments_name_the_argument():
    model = _qwen()
    with pytest.raises(ArgumentError, match="temperature"):
        ce_trl.add_fused_lm_head(model, temperature=0.0)
    with pytest.raises(ArgumentError, match="outputs"):
        ce_trl.add_fused_lm_head(model, outputs=("log_probs", "logits"))
    with pytest.raises(ArgumentTypeError, match="outputs"):
        ce_trl.add_fused_lm_head(model, outputs="log_probs")
    with pytest.raises(ArgumentTypeError, match="model"):
        ce_trl.add_fused_lm_head(torch.nn.Linear(2, 2))


def test_apply_and_revert_swap_the_name_in_every_trainer_module():
    import trl.trainer.dpo_trainer as dpo
    import trl.trainer.grpo_trainer as grpo

    own = trl_utils.add_fused_lm_head
    try:
        ce_trl.apply()
        ce_trl.apply()  # idempotent
        assert ce_trl.is_applied()
        assert grpo.add_fused_lm_head is ce_trl.add_fused_lm_head
        assert dpo.add_fused_lm_head is ce_trl.add_fused_lm_head
        assert trl_utils.add_fused_lm_head is ce_trl.add_fused_lm_head
    finally:
        ce_trl.revert()
    assert not ce_trl.is_applied()
    assert grpo.add_fused_lm_head is own and dpo.add_fused_lm_head is own


# ---------------------------------------------------------------- the trainer steps


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                                eos_token="<eos>", unk_token="<unk>")


def _words(i, n, step):
    return " ".join(f"w{(i * step + j) % (V - 3)}" for j in range(n))


def _step(tmp_path, make_trainer, applied):
    """One training step with SGD at lr 1 and no clipping: the parameter change is minus
    the gradient. Returns (the fused heads' per-token log-probs, in call order; the
    parameter changes)."""
    model_dir = tmp_path / "model"
    if not model_dir.exists():
        _qwen(seed=11).save_pretrained(model_dir)
        _tokenizer().save_pretrained(model_dir)
    if applied:
        ce_trl.apply()
    try:
        trainer = make_trainer(str(model_dir), _tokenizer(), tmp_path / ("on" if applied else "off"))
    finally:
        ce_trl.revert()
    model = trainer.model
    seen = []

    def record(module, args, kwargs, output):
        if kwargs.get("fused_lm_head"):
            seen.append(output.log_probs.detach().clone())

    model.register_forward_hook(record, with_kwargs=True)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    trainer.train()
    delta = {k: before[k] - p.detach() for k, p in model.named_parameters()}
    return seen, delta


COMMON = dict(max_steps=1, learning_rate=1.0, optim="sgd", max_grad_norm=0.0, report_to=[],
              use_cpu=True, save_strategy="no", seed=0, bf16=False, logging_steps=1)


def _compare(off, on):
    seen_off, delta_off = off
    seen_on, delta_on = on
    assert len(seen_on) == len(seen_off) >= 1
    for a, b in zip(seen_on, seen_off):
        _close(a, b, "per-token log-probs of the trainer step")
    moved = 0
    for k in delta_off:
        _close(delta_on[k], delta_off[k], f"update of {k}", rtol=1e-4, atol=1e-6)
        moved += bool(delta_off[k].abs().max() > 0)
    assert moved > 10  # the step did train the model


def test_grpo_step_equal_with_and_without_apply(tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    prompts = Dataset.from_dict({"prompt": [_words(i, 5, 7) for i in range(8)]})

    def reward(completions, **kwargs):  # longer, more varied completions score higher
        return [float(len(set(c.split()))) for c in completions]

    def make(model_dir, tok, out):
        args = trl.GRPOConfig(output_dir=str(out), per_device_train_batch_size=4, num_generations=4,
                              max_completion_length=6, beta=0.1, temperature=0.7, **COMMON)
        return trl.GRPOTrainer(model=model_dir, reward_funcs=reward, args=args,
                               train_dataset=prompts, processing_class=tok)

    _compare(_step(tmp_path, make, False), _step(tmp_path, make, True))


def test_dpo_step_equal_with_and_without_apply(tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    pairs = Dataset.from_dict({"prompt": [_words(i, 4, 7) for i in range(4)],
                               "chosen": [_words(i, 3, 3) for i in range(4)],
                               "rejected": [_words(i, 5, 5) for i in range(4)]})

    def make(model_dir, tok, out):
        args = trl.DPOConfig(output_dir=str(out), per_device_train_batch_size=4, **COMMON)
        return trl.DPOTrainer(model=model_dir, args=args, train_dataset=pairs, processing_class=tok)

    _compare(_step(tmp_path, make, False), _step(tmp_path, make, True))
