"""Training objectives for chat fine-tuning and preference optimisation, in plain torch.

The training worker batches (prompt, completion) token lists with :func:`completion_batch`,
scores them with :func:`completion_logps` and feeds the sequence log-probs to :func:`dpo_loss`
or :func:`kto_loss`. The formulas follow TRL's ``DPOTrainer`` and ``KTOTrainer`` so numbers
and metric names line up with runs people already know.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # the label that marks "no loss here", as Hugging Face models expect
DPO_LOSS_TYPES = ("sigmoid", "ipo")
# Clamp for :func:`kto_weights`: past 10x one kind's examples dominate every batch anyway.
KTO_WEIGHT_RANGE = (0.1, 10.0)

# ---------------------------------------------------------------------------------------------
# Batches and log-probs


def completion_batch(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-padded rows ``prompt + completion`` with the loss on the completion only.

    Returns ``input_ids`` [B, T] long, ``attention_mask`` [B, T] long (1 real, 0 pad) and
    ``labels`` [B, T]: ``input_ids`` with -100 on prompt tokens and padding.
    """
    _check_pairs(prompts, completions)
    rows = [list(p) + list(c) for p, c in zip(prompts, completions, strict=True)]
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    for b, (row, prompt) in enumerate(zip(rows, prompts, strict=True)):
        input_ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[b, : len(row)] = 1
        labels[b, len(prompt) : len(row)] = input_ids[b, len(prompt) : len(row)]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _check_pairs(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]]) -> None:
    # An empty prompt leaves the first completion token with nothing to predict it from, and an
    # empty completion scores 0 (sum) or nothing (mean): both are data bugs, not edge cases.
    if len(prompts) != len(completions) or not prompts:
        raise ValueError(
            f"need as many prompts as completions, at least one: got {len(prompts)} prompts "
            f"and {len(completions)} completions"
        )
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        if not prompt or not completion:
            raise ValueError(
                f"pair {i} has an empty prompt or completion; start every prompt with BOS or a "
                "chat-template header and drop examples whose completion is empty"
            )


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, average: bool = False
) -> torch.Tensor:
    """[B] sum (``average=True``: mean) of log p(label_t | tokens before t) over labelled tokens.

    ``logits`` [B, T, V] at position t predict token t + 1, hence the shift. log_softmax runs in
    float32: in bf16 the log-probs of a long completion lose the small differences DPO uses.
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    logprobs = logits[:, :-1].float().log_softmax(dim=-1)
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    total = (picked * mask).sum(dim=-1)
    if not average:
        return total
    return total / mask.sum(dim=-1).clamp(min=1)


def completion_logps(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    pad_id: int,
    average: bool = False,
) -> torch.Tensor:
    """[B] log-probs of each completion given its prompt, from one forward of the batch.

    Position ids count real tokens only (pads after the end repeat the last position), so a
    row scores the same batched or alone.
    """
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in completion_batch(prompts, completions, pad_id).items()}
    mask = batch["attention_mask"]
    position_ids = (mask.cumsum(dim=-1) - 1).clamp(min=0)
    logits = model(
        input_ids=batch["input_ids"], attention_mask=mask, position_ids=position_ids
    ).logits
    return sequence_logps(logits, batch["labels"], average=average)


# ---------------------------------------------------------------------------------------------
# DPO and IPO


@dataclass
class PreferenceOutput:
    """Per-pair results of :func:`dpo_loss`."""

    losses: torch.Tensor
    """[B] per-pair loss; the caller reduces (usually the mean)."""
    chosen_rewards: torch.Tensor
    """[B] implicit reward ``beta * (policy_chosen - ref_chosen)``, detached."""
    rejected_rewards: torch.Tensor
    """[B] implicit reward ``beta * (policy_rejected - ref_rejected)``, detached."""


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> PreferenceOutput:
    """Direct preference losses on sequence log-probs, with h = (pc - rc) - (pr - rr).

    ``"sigmoid"``: DPO (Rafailov et al. 2023), ``-logsigmoid(beta * h)``; with
    ``label_smoothing`` eps > 0 it is conservative DPO (cDPO, Mitchell 2023), which treats each
    label as flipped with probability eps:
    ``-(1 - eps) * logsigmoid(beta * h) - eps * logsigmoid(-beta * h)``.

    ``"ipo"``: IPO (Azar et al. 2023), ``(h - 1/(2*beta))**2``. It regresses h onto a fixed
    target, so h must not grow with completion length: pass ``average=True`` log-probs from
    :func:`completion_logps`, as TRL does for IPO.
    """
    _check_dpo_args(beta, loss_type, label_smoothing)
    chosen_logratios = policy_chosen - ref_chosen
    rejected_logratios = policy_rejected - ref_rejected
    h = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(
            -beta * h
        )
    else:
        losses = (h - 1 / (2 * beta)) ** 2
    return PreferenceOutput(
        losses=losses,
        chosen_rewards=(beta * chosen_logratios).detach(),
        rejected_rewards=(beta * rejected_logratios).detach(),
    )


def _check_dpo_args(beta: float, loss_type: str, label_smoothing: float) -> None:
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {DPO_LOSS_TYPES}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0 (it scales the implicit reward), got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(
            f"label_smoothing must be in [0, 0.5) (at 0.5 the labels carry no signal), "
            f"got {label_smoothing}"
        )
    if loss_type == "ipo" and label_smoothing > 0:
        # TRL silently ignores it for IPO; a setting that does nothing is a config mistake.
        raise ValueError("label_smoothing applies to loss_type 'sigmoid' only; set it to 0 for ipo")


def preference_metrics(
    out: PreferenceOutput, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor
) -> dict[str, float]:
    """Batch means under TRL's metric names, so dashboards read like a TRL run's."""
    chosen, rejected = out.chosen_rewards, out.rejected_rewards
    return {
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/margin": (chosen - rejected).mean().item(),
        "rewards/accuracy": (chosen > rejected).float().mean().item(),
        "logps/chosen": policy_chosen.detach().mean().item(),
        "logps/rejected": policy_rejected.detach().mean().item(),
    }


# ---------------------------------------------------------------------------------------------
# KTO


@dataclass
class KtoOutput:
    """Per-example results of :func:`kto_loss`."""

    losses: torch.Tensor
    """[B] per-example loss, weights applied; the caller reduces (usually the mean)."""
    rewards: torch.Tensor
    """[B] implicit reward ``beta * (policy - ref)``, detached."""
    kl: torch.Tensor
    """Scalar: the reference point z0 the losses were measured against."""


def kto_kl(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """The KTO reference point z0 (Ethayarajh et al. 2024), computed as TRL does.

    Inputs score mismatched pairs (a prompt with another example's completion), an estimate of
    KL(policy || ref). It is clamped at 0 (a KL cannot be negative, the estimate can) and
    detached: z0 shifts the loss but gets no gradient.
    """
    if policy_kl_logps.numel() == 0:
        raise ValueError("kto_kl needs at least one mismatched pair; the batch is empty")
    return (policy_kl_logps - ref_kl_logps).mean().clamp(min=0).detach()


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> KtoOutput:
    """KTO's per-example losses, with r = policy - ref and z0 = ``kl``.

    Desirable: ``w_d * (1 - sigmoid(beta * (r - z0)))``; undesirable:
    ``w_u * (1 - sigmoid(beta * (z0 - r)))``. ``desirable`` is a bool [B] mask.
    """
    if desirable.dtype != torch.bool:
        raise ValueError(f"desirable must be a bool mask, got dtype {desirable.dtype}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0 (it scales the implicit reward), got {beta}")
    logratios = policy_logps - ref_logps
    gain = desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl)))
    pain = undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios)))
    return KtoOutput(
        losses=torch.where(desirable, gain, pain),
        rewards=(beta * logratios).detach(),
        kl=kl.detach(),
    )


def kto_weights(n_desirable: int, n_undesirable: int) -> tuple[float, float]:
    """Default ``(desirable_weight, undesirable_weight)`` for an imbalanced set.

    The KTO paper advises ``w_d * n_d / (w_u * n_u)`` in [1, 4/3]; we keep ``w_u = 1`` and
    make the ratio 1, clamped to :data:`KTO_WEIGHT_RANGE` so a near-empty kind is not
    amplified without bound. With none of either kind there is nothing to balance.
    """
    if n_desirable < 0 or n_undesirable < 0:
        raise ValueError(f"counts must be >= 0, got {n_desirable} and {n_undesirable}")
    if n_desirable == 0 or n_undesirable == 0:
        return 1.0, 1.0
    low, high = KTO_WEIGHT_RANGE
    return min(max(n_undesirable / n_desirable, low), high), 1.0


def kto_metrics(
    out: KtoOutput, desirable: torch.Tensor, policy_logps: torch.Tensor
) -> dict[str, float]:
    """Batch means under TRL's names; a kind absent from the batch is left out, not NaN."""
    metrics = {"kl": out.kl.item()}
    logps = policy_logps.detach()
    for name, mask in (("desirable", desirable), ("undesirable", ~desirable)):
        if mask.any():
            metrics[f"rewards/{name}"] = out.rewards[mask].mean().item()
            metrics[f"logps/{name}"] = logps[mask].mean().item()
    return metrics
