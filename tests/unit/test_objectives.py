"""The training objectives against the papers' formulas written out by hand, and on a tiny
Llama: DPO must widen the preference margin, KTO must lower the loss of desirable examples."""

from __future__ import annotations

import math

import pytest
import torch

from core.objectives import (
    completion_batch,
    completion_logps,
    dpo_loss,
    kto_kl,
    kto_loss,
    kto_metrics,
    kto_weights,
    preference_metrics,
    sequence_logps,
)

PAD = 0
CHOSEN = [5, 6, 7, 8]
REJECTED = [9, 10, 11, 12]


def _logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


def _prompts(n: int, seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 7, (n,), generator=gen)
    return [torch.randint(13, 64, (int(k),), generator=gen).tolist() for k in lengths]


# ---------------------------------------------------------------------------------------------
# Batches and log-probs


def test_completion_batch_masks_prompt_and_padding() -> None:
    batch = completion_batch([[1, 2, 3], [4]], [[7, 8], [9, 10, 11]], pad_id=PAD)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 7, 8], [4, 9, 10, 11, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 7, 8], [-100, 9, 10, 11, -100]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_completion_batch_rejects_empty_or_unpaired_rows() -> None:
    with pytest.raises(ValueError, match="empty"):
        completion_batch([[1], []], [[2], [3]], pad_id=PAD)
    with pytest.raises(ValueError, match="as many"):
        completion_batch([[1]], [[2], [3]], pad_id=PAD)


def test_sequence_logps_matches_a_loop_over_positions() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 5)
    labels = torch.tensor([[-100, -100, 3, 1, 4, -100], [-100, 2, 0, 0, -100, -100]])
    expected_sum, expected_mean = [], []
    for b in range(2):
        terms = []
        for t in range(1, 6):
            if labels[b, t] != -100:
                logprobs = logits[b, t - 1].log_softmax(-1)
                terms.append(float(logprobs[labels[b, t]]))
        expected_sum.append(sum(terms))
        expected_mean.append(sum(terms) / len(terms))
    assert sequence_logps(logits, labels).tolist() == pytest.approx(expected_sum, abs=1e-5)
    got_mean = sequence_logps(logits, labels, average=True).tolist()
    assert got_mean == pytest.approx(expected_mean, abs=1e-5)


def test_sequence_logps_runs_in_float32_for_bf16_logits() -> None:
    logits = torch.randn(1, 4, 8).to(torch.bfloat16)
    labels = torch.tensor([[-100, 1, 2, 3]])
    assert sequence_logps(logits, labels).dtype == torch.float32


def test_completion_logps_is_the_same_batched_or_alone() -> None:
    model = _tiny_llama().eval()
    prompts, completions = [[1, 2, 3, 4, 5], [6]], [[7, 8], [9, 10, 11]]
    with torch.no_grad():
        batched = completion_logps(model, prompts, completions, pad_id=PAD)
        pairs = zip(prompts, completions, strict=True)
        alone = [completion_logps(model, [p], [c], pad_id=PAD).item() for p, c in pairs]
    assert batched.tolist() == pytest.approx(alone, abs=1e-4)


# ---------------------------------------------------------------------------------------------
# DPO and IPO on hand values

PC, PR, RC, RR = [-3.0, -7.5, -2.0], [-4.0, -6.0, -9.0], [-3.5, -7.0, -2.5], [-3.0, -6.5, -8.0]


def _h(i: int) -> float:
    return (PC[i] - RC[i]) - (PR[i] - RR[i])


def _dpo(beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0):
    t = [torch.tensor(v) for v in (PC, PR, RC, RR)]
    return dpo_loss(*t, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)


def test_dpo_sigmoid_matches_the_paper() -> None:
    beta = 0.5
    out = _dpo(beta)
    expected = [-_logsigmoid(beta * _h(i)) for i in range(3)]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-5)
    assert out.chosen_rewards.tolist() == pytest.approx([beta * (PC[i] - RC[i]) for i in range(3)])
    assert out.rejected_rewards.tolist() == pytest.approx(
        [beta * (PR[i] - RR[i]) for i in range(3)]
    )


def test_cdpo_label_smoothing_matches_the_formula() -> None:
    beta, eps = 0.2, 0.1
    out = _dpo(beta, label_smoothing=eps)
    expected = [
        -(1 - eps) * _logsigmoid(beta * _h(i)) - eps * _logsigmoid(-beta * _h(i)) for i in range(3)
    ]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-5)


def test_ipo_matches_the_paper() -> None:
    beta = 0.25
    out = _dpo(beta, loss_type="ipo")
    expected = [(_h(i) - 1 / (2 * beta)) ** 2 for i in range(3)]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-5)


def test_dpo_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="loss_type"):
        _dpo(0.1, loss_type="hinge")
    with pytest.raises(ValueError, match="label_smoothing"):
        _dpo(0.1, label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        _dpo(0.1, label_smoothing=-0.1)
    with pytest.raises(ValueError, match="ipo"):
        _dpo(0.1, loss_type="ipo", label_smoothing=0.1)


def test_dpo_rewards_are_detached() -> None:
    pc = torch.tensor(PC, requires_grad=True)
    out = dpo_loss(pc, torch.tensor(PR), torch.tensor(RC), torch.tensor(RR))
    assert out.losses.requires_grad
    assert not out.chosen_rewards.requires_grad


def test_preference_metrics_under_trl_names() -> None:
    beta = 0.5
    out = _dpo(beta)
    metrics = preference_metrics(out, torch.tensor(PC), torch.tensor(PR))
    chosen = [beta * (PC[i] - RC[i]) for i in range(3)]
    rejected = [beta * (PR[i] - RR[i]) for i in range(3)]
    assert metrics["rewards/chosen"] == pytest.approx(sum(chosen) / 3)
    assert metrics["rewards/rejected"] == pytest.approx(sum(rejected) / 3)
    assert metrics["rewards/margin"] == pytest.approx((sum(chosen) - sum(rejected)) / 3)
    assert metrics["rewards/accuracy"] == pytest.approx(2 / 3)  # row 1: -0.25 < 0.25
    assert metrics["logps/chosen"] == pytest.approx(sum(PC) / 3)
    assert metrics["logps/rejected"] == pytest.approx(sum(PR) / 3)


# ---------------------------------------------------------------------------------------------
# KTO on hand values


def test_kto_kl_is_a_clamped_detached_mean() -> None:
    policy = torch.tensor([-3.0, -5.0, -4.0], requires_grad=True)
    kl = kto_kl(policy, torch.tensor([-4.0, -4.5, -4.0]))
    assert kl.item() == pytest.approx((1.0 - 0.5 + 0.0) / 3)
    assert not kl.requires_grad
    assert kto_kl(torch.tensor([-5.0, -6.0]), torch.tensor([-4.0, -4.0])).item() == 0.0


def test_kto_loss_matches_the_paper() -> None:
    beta, z0, w_d, w_u = 0.5, 0.3, 1.5, 0.8
    policy, ref = [-2.0, -6.0, -3.0, -1.0], [-3.0, -5.0, -3.5, -2.0]
    desirable = [True, False, True, False]
    out = kto_loss(
        torch.tensor(policy),
        torch.tensor(ref),
        torch.tensor(desirable),
        kl=torch.tensor(z0),
        beta=beta,
        desirable_weight=w_d,
        undesirable_weight=w_u,
    )
    expected = []
    for p, r, d in zip(policy, ref, desirable, strict=True):
        if d:
            expected.append(w_d * (1 - _sigmoid(beta * ((p - r) - z0))))
        else:
            expected.append(w_u * (1 - _sigmoid(beta * (z0 - (p - r)))))
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-5)
    assert out.rewards.tolist() == pytest.approx(
        [beta * (p - r) for p, r in zip(policy, ref, strict=True)]
    )
    assert out.kl.item() == pytest.approx(z0)

    metrics = kto_metrics(out, torch.tensor(desirable), torch.tensor(policy))
    assert metrics["rewards/desirable"] == pytest.approx(beta * (1.0 + 0.5) / 2)
    assert metrics["logps/undesirable"] == pytest.approx((-6.0 - 1.0) / 2)


def test_kto_loss_rejects_a_non_bool_mask() -> None:
    with pytest.raises(ValueError, match="bool"):
        kto_loss(torch.zeros(2), torch.zeros(2), torch.tensor([1, 0]), kl=torch.tensor(0.0))


def test_kto_metrics_omit_an_absent_kind() -> None:
    desirable = torch.tensor([True, True])
    out = kto_loss(torch.zeros(2), torch.zeros(2), desirable, kl=torch.tensor(0.0))
    metrics = kto_metrics(out, desirable, torch.zeros(2))
    assert set(metrics) == {"kl", "rewards/desirable", "logps/desirable"}


def test_kto_weights_balance_the_kinds() -> None:
    assert kto_weights(100, 300) == pytest.approx((3.0, 1.0))
    assert kto_weights(400, 100) == pytest.approx((0.25, 1.0))
    assert kto_weights(1, 1000) == pytest.approx((10.0, 1.0))
    assert kto_weights(10_000, 1) == pytest.approx((0.1, 1.0))
    assert kto_weights(0, 50) == (1.0, 1.0)
    assert kto_weights(50, 0) == (1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Training a tiny model


def test_dpo_training_widens_the_margin() -> None:
    model = _tiny_llama()
    prompts = _prompts(8)
    n = len(prompts)
    with torch.no_grad():
        ref_c = completion_logps(model, prompts, [CHOSEN] * n, pad_id=PAD)
        ref_r = completion_logps(model, prompts, [REJECTED] * n, pad_id=PAD)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(30):
        pol_c = completion_logps(model, prompts, [CHOSEN] * n, pad_id=PAD)
        pol_r = completion_logps(model, prompts, [REJECTED] * n, pad_id=PAD)
        out = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta=0.1)
        optimizer.zero_grad()
        out.losses.mean().backward()
        optimizer.step()
    with torch.no_grad():
        pol_c = completion_logps(model, prompts, [CHOSEN] * n, pad_id=PAD)
        pol_r = completion_logps(model, prompts, [REJECTED] * n, pad_id=PAD)
    out = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta=0.1)
    metrics = preference_metrics(out, pol_c, pol_r)
    # At the start policy == ref, so the margin is 0; a sign error drives it negative.
    assert metrics["rewards/margin"] > 0.5
    assert (pol_c - pol_r).mean() > (ref_c - ref_r).mean() + 5.0
    assert metrics["rewards/accuracy"] == 1.0
    assert out.losses.mean().item() < math.log(2) - 0.2


def test_kto_training_lowers_the_desirable_loss() -> None:
    model = _tiny_llama()
    prompts = _prompts(8, seed=2)
    completions = [CHOSEN if i % 2 == 0 else REJECTED for i in range(len(prompts))]
    desirable = torch.tensor([i % 2 == 0 for i in range(len(prompts))])
    mismatched = completions[1:] + completions[:1]  # each prompt with its neighbour's answer
    with torch.no_grad():
        ref = completion_logps(model, prompts, completions, pad_id=PAD)
        ref_kl = completion_logps(model, prompts, mismatched, pad_id=PAD)

    def step_output() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            kl = kto_kl(completion_logps(model, prompts, mismatched, pad_id=PAD), ref_kl)
        policy = completion_logps(model, prompts, completions, pad_id=PAD)
        return kto_loss(policy, ref, desirable, kl, beta=0.1).losses, policy

    start_losses, start_policy = step_output()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(10):
        losses, _ = step_output()
        optimizer.zero_grad()
        losses.mean().backward()
        optimizer.step()
    end_losses, end_policy = step_output()
    assert end_policy[desirable].mean() > start_policy[desirable].mean() + 1.0
    assert end_losses[desirable].mean() < start_losses[desirable].mean() - 0.02
