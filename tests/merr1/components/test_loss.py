import math

import pytest
import torch

from merr1.components.loss import GRPOLoss, grpo_loss, k3_kl, local_normalizer

# One sequence, two tokens with importance ratios 1.5 and 0.5 (logp - old_logp = log r).
RATIOS = torch.tensor([[1.5, 0.5]])
OLD = torch.zeros(1, 2)
MASK = torch.ones(1, 2, dtype=torch.bool)


@pytest.mark.parametrize(
    "advantage, clip_low, clip_high, loss, frac_low, frac_high",
    [
        # A = +1: token 1 min(1.5, 1.2) = 1.2; token 2 min(0.5, 0.8) = 0.5 -> -(1.2 + 0.5) / 2
        (1.0, 0.2, None, -0.85, 0.0, 0.5),
        # A = -1: token 1 min(-1.5, -1.2) = -1.5; token 2 min(-0.5, -0.8) = -0.8 -> (1.5 + 0.8) / 2
        (-1.0, 0.2, None, 1.15, 0.5, 0.0),
        # asymmetric clip (DAPO clip-higher): upper bound 1.6 does not bind -> -(1.5 + 0.5) / 2
        (1.0, 0.2, 0.6, -1.0, 0.0, 0.0),
        # A = -1 with a wide lower clip 0.6 (bound 0.4): token 2 unclipped -> (1.5 + 0.5) / 2
        (-1.0, 0.6, 0.2, 1.0, 0.0, 0.0),
        # A = 0: no signal
        (0.0, 0.2, None, 0.0, 0.0, 0.0),
    ],
)
def test_clipped_surrogate_table(advantage, clip_low, clip_high, loss, frac_low, frac_high):
    logprobs = torch.log(RATIOS)
    out, stats = grpo_loss(
        logprobs, torch.tensor([advantage]), MASK, OLD, clip_low=clip_low, clip_high=clip_high
    )
    assert out.item() == pytest.approx(loss, abs=1e-6)
    assert stats["clip_frac_low"].item() == pytest.approx(frac_low)
    assert stats["clip_frac_high"].item() == pytest.approx(frac_high)
    assert stats["ratio_mean"].item() == pytest.approx(1.0)
    assert stats["ratio_min"].item() == pytest.approx(0.5)
    assert stats["ratio_max"].item() == pytest.approx(1.5)
    assert stats["kl"].item() == 0.0


# Two sequences with ratio 1 (on-policy): seq 0 has 1 token and A = 2, seq 1 has 3 tokens and
# A = -1; per-token loss = -A: [-2], [1, 1, 1].
AGG_MASK = torch.tensor([[True, False, False], [True, True, True]])
AGG_ADV = torch.tensor([2.0, -1.0])


@pytest.mark.parametrize(
    "aggregation, max_len, expected, grad0, grad1",
    [
        # mean per sequence, then over sequences: (-2 + 1) / 2; d/dlogp = -A / (n_i * 2)
        ("grpo", None, -0.5, -1.0, 1.0 / 6.0),
        # token sum / 4 tokens: (-2 + 3) / 4; d/dlogp = -A / 4
        ("dapo", None, 0.25, -0.5, 0.25),
        # token sum / (2 sequences * 5): 1 / 10; d/dlogp = -A / 10
        ("dr_grpo", 5, 0.1, -0.2, 0.1),
    ],
)
def test_aggregation_modes(aggregation, max_len, expected, grad0, grad1):
    logprobs = torch.zeros(2, 3, requires_grad=True)
    loss, stats = grpo_loss(logprobs, AGG_ADV, AGG_MASK, aggregation=aggregation, max_len=max_len)
    assert loss.item() == pytest.approx(expected)
    assert stats["policy_loss"].item() == pytest.approx(expected)
    assert stats["num_tokens"].item() == 4
    loss.backward()
    assert logprobs.grad[0, 0].item() == pytest.approx(grad0)
    assert logprobs.grad[1, 0].item() == pytest.approx(grad1)
    assert logprobs.grad[0, 1].item() == 0.0  # masked token


def test_k3_formula_and_beta():
    # logp = 0, ref = log 2: exp(log 2) - log 2 - 1 = 1 - log 2
    logprobs = torch.zeros(1, 1)
    ref = torch.full((1, 1), math.log(2.0))
    assert k3_kl(logprobs, ref).item() == pytest.approx(1.0 - math.log(2.0))
    assert k3_kl(logprobs, logprobs).item() == 0.0
    mask = torch.ones(1, 1, dtype=torch.bool)
    loss, stats = grpo_loss(logprobs, torch.zeros(1), mask, ref_logprobs=ref, beta=0.1)
    assert loss.item() == pytest.approx(0.1 * (1.0 - math.log(2.0)))
    assert stats["kl"].item() == pytest.approx(1.0 - math.log(2.0))
    assert stats["policy_loss"].item() == 0.0


@pytest.mark.parametrize("beta, ref", [(0.0, torch.full((1, 1), 5.0)), (0.1, None)])
def test_kl_skipped(beta, ref):
    mask = torch.ones(1, 1, dtype=torch.bool)
    loss, stats = grpo_loss(torch.zeros(1, 1), torch.ones(1), mask, ref_logprobs=ref, beta=beta)
    assert loss.item() == pytest.approx(-1.0)
    assert stats["kl"].item() == 0.0


def test_k3_non_negative_random():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, generator=g), torch.randn(1000, generator=g)
    assert (k3_kl(a, b) >= 0).all()


def test_per_token_advantages_equal_broadcast():
    logprobs = torch.log(RATIOS)
    seq, _ = grpo_loss(logprobs, torch.tensor([0.7]), MASK, OLD)
    tok, _ = grpo_loss(logprobs, torch.full((1, 2), 0.7), MASK, OLD)
    assert seq.item() == pytest.approx(tok.item())


@pytest.mark.parametrize("aggregation", ["grpo", "dapo", "dr_grpo"])
def test_global_normalizer_matches_single_process(aggregation):
    # Split a batch over two "ranks": with the global count as normalizer, the summed losses and
    # gradients equal the single-process ones.
    g = torch.Generator().manual_seed(0)
    logprobs = (torch.randn(6, 5, generator=g) * 0.1).requires_grad_()
    old = logprobs.detach() + torch.randn(6, 5, generator=g) * 0.1
    ref = logprobs.detach() + torch.randn(6, 5, generator=g) * 0.1
    adv = torch.randn(6, generator=g)
    mask = torch.rand(6, 5, generator=g) > 0.3
    mask[:, 0] = True
    kwargs = dict(aggregation=aggregation, max_len=5, beta=0.05, clip_low=0.1, clip_high=0.3)
    full, _ = grpo_loss(logprobs, adv, mask, old, ref, **kwargs)
    (full_grad,) = torch.autograd.grad(full, logprobs)
    count = mask.sum() if aggregation == "dapo" else torch.tensor(6)
    parts = [
        grpo_loss(logprobs[s], adv[s], mask[s], old[s], ref[s], normalizer=count, **kwargs)[0]
        for s in (slice(0, 2), slice(2, 6))
    ]
    total = parts[0] + parts[1]
    (split_grad,) = torch.autograd.grad(total, logprobs)
    assert total.item() == pytest.approx(full.item(), abs=1e-6)
    torch.testing.assert_close(split_grad, full_grad)


def test_fully_masked_batch_is_nan_free():
    loss, stats = grpo_loss(torch.zeros(2, 3), torch.ones(2), torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    assert all(torch.isfinite(v).all() for v in stats.values())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(aggregation="mean"), "aggregation"),
        (dict(aggregation="dr_grpo"), "max_len"),
        (dict(clip_low=-0.1), "clip"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        grpo_loss(torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1, dtype=torch.bool), **kwargs)


def test_component_wraps_function():
    loss_fn = GRPOLoss(clip_low=0.2, clip_high=0.28, beta=0.0, aggregation="dapo")
    assert not loss_fn.needs_reference
    logprobs = torch.log(RATIOS)
    a, _ = loss_fn(logprobs, torch.tensor([1.0]), MASK, OLD)
    b, _ = grpo_loss(logprobs, torch.tensor([1.0]), MASK, OLD, clip_high=0.28, aggregation="dapo")
    assert a.item() == b.item()
    with pytest.raises(ValueError, match="max_len"):
        GRPOLoss(aggregation="dr_grpo")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(beta=-1.0), r"loss.beta must be a finite number >= 0, got -1.0"),
        (dict(beta=float("nan")), r"loss.beta must be a finite number >= 0, got nan"),
        (dict(beta="0.1"), r"loss.beta must be a finite number >= 0, got '0.1'"),
        (dict(clip_low=0.0), r"loss.clip_low must be a finite number > 0, got 0.0"),
        (dict(clip_high=-0.2), r"loss.clip_high must be a finite number > 0, got -0.2"),
    ],
)
def test_component_refuses_values_that_train_something_else(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GRPOLoss(**kwargs)
    assert GRPOLoss(beta=0.04, clip_low=0.2, clip_high=None).needs_reference


@pytest.mark.gpu
@pytest.mark.parametrize("aggregation", ["grpo", "dapo", "dr_grpo"])
def test_loss_on_cuda_matches_cpu(aggregation):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    g = torch.Generator().manual_seed(0)
    logprobs, old, ref = (torch.randn(8, 16, generator=g) * 0.1 for _ in range(3))
    adv, mask = torch.randn(8, generator=g), torch.rand(8, 16, generator=g) > 0.2
    kwargs = dict(aggregation=aggregation, max_len=16, beta=0.04, clip_high=0.28)
    cpu, cpu_stats = grpo_loss(logprobs, adv, mask, old, ref, **kwargs)
    cuda, cuda_stats = grpo_loss(logprobs.cuda(), adv.cuda(), mask.cuda(), old.cuda(), ref.cuda(), **kwargs)
    assert cuda.device.type == "cuda"
    assert cuda.item() == pytest.approx(cpu.item(), abs=1e-5)
    for name, value in cpu_stats.items():
        assert cuda_stats[name].device.type == "cuda"
        assert cuda_stats[name].item() == pytest.approx(value.item(), abs=1e-5)


def test_cross_entropy_sum_hand_values_and_chunking():
    from merr1.components.loss import cross_entropy_sum

    # Uniform logits over V = 4 -> each token costs log 4; a one-hot-ish row costs log(1 + 3e^-10)+0.
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    targets = torch.tensor([2, 0, 1])
    expected = 2 * math.log(4) + math.log(1 + 3 * math.exp(-10))
    for chunk in (1, 2, 4096):
        assert cross_entropy_sum(logits, targets, chunk_size=chunk).item() == pytest.approx(expected, rel=1e-6)
    assert cross_entropy_sum(logits[:0], targets[:0]).item() == 0.0
    with pytest.raises(ValueError, match="targets"):
        cross_entropy_sum(logits, targets[:2])


# ---------------------------------------------------------------------------------------------
# Sequence-level importance ratio (GSPO, arXiv 2507.18071): s = exp(mean_t (logp - old_logp)).


@pytest.mark.parametrize(
    "ratios, advantage, loss, grad, frac_low, frac_high",
    [
        # s = sqrt(1.5 * 0.5) = sqrt(0.75), inside [0.8, 1.2]: loss -s A; d/dlogp_t = -A s / 2
        ([1.5, 0.5], 1.0, -math.sqrt(0.75), -math.sqrt(0.75) / 2, 0.0, 0.0),
        ([1.5, 0.5], -1.0, math.sqrt(0.75), math.sqrt(0.75) / 2, 0.0, 0.0),
        # s = 2 > 1.2 with A > 0: clipped to 1.2, no gradient
        ([2.0, 2.0], 1.0, -1.2, 0.0, 0.0, 1.0),
        # s = 2 with A < 0: min(-2, -1.2) = -2 unclipped; d/dlogp_t = -A s / 2 = 1
        ([2.0, 2.0], -1.0, 2.0, 1.0, 0.0, 0.0),
        # s = 0.5 < 0.8 with A < 0: min(-0.5, -0.8) = -0.8, no gradient
        ([0.5, 0.5], -1.0, 0.8, 0.0, 1.0, 0.0),
        # s = 0.5 with A > 0: min(0.5, 0.8) = 0.5 unclipped; d/dlogp_t = -s / 2
        ([0.5, 0.5], 1.0, -0.5, -0.25, 0.0, 0.0),
    ],
)
def test_sequence_ratio_table(ratios, advantage, loss, grad, frac_low, frac_high):
    # a third, masked position with a huge log-ratio must not enter s
    logprobs = torch.log(torch.tensor([ratios + [100.0]])).requires_grad_()
    mask = torch.tensor([[True, True, False]])
    out, stats = grpo_loss(logprobs, torch.tensor([advantage]), mask, torch.zeros(1, 3), importance_ratio="sequence")
    assert out.item() == pytest.approx(loss, abs=1e-6)
    out.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[grad, grad, 0.0]]), rtol=1e-6, atol=1e-7)
    s = math.sqrt(ratios[0] * ratios[1])
    assert stats["ratio_mean"].item() == pytest.approx(s)
    assert (stats["ratio_min"].item(), stats["ratio_max"].item()) == pytest.approx((s, s))
    assert (stats["clip_frac_low"].item(), stats["clip_frac_high"].item()) == (frac_low, frac_high)


def test_sequence_ratio_weighs_sequences_by_aggregation():
    # seq 0: 1 token, log-ratio log 1.1 -> s0 = 1.1, A = 1 -> loss -1.1 per token;
    # seq 1: 2 tokens, log-ratios log 2 and log 0.5 -> s1 = 1, A = -1 -> loss 1 per token.
    logprobs = torch.log(torch.tensor([[1.1, 1.0], [2.0, 0.5]]))
    mask = torch.tensor([[True, False], [True, True]])
    adv = torch.tensor([1.0, -1.0])
    expected = {"grpo": (-1.1 + 1.0) / 2, "dapo": (-1.1 + 2.0) / 3, "dr_grpo": (-1.1 + 2.0) / (2 * 4)}
    for aggregation, value in expected.items():
        loss, _ = grpo_loss(logprobs, adv, mask, torch.zeros(2, 2), importance_ratio="sequence",
                            aggregation=aggregation, max_len=4)  # fmt: skip
        assert loss.item() == pytest.approx(value, abs=1e-6), aggregation


@pytest.mark.parametrize("aggregation", ["grpo", "dapo", "dr_grpo"])
def test_on_policy_sequence_and_token_ratios_agree(aggregation):
    # Ratios 1: d r_t = d logp_t and d s_i = mean_t d logp_t, spread over the n_i tokens that each
    # hold s_i: the same loss and gradient for every aggregation.
    g = torch.Generator().manual_seed(0)
    logprobs = torch.randn(4, 6, generator=g).requires_grad_()
    mask = torch.rand(4, 6, generator=g) > 0.3
    mask[:, 0] = True
    adv = torch.randn(4, generator=g)
    kwargs = dict(aggregation=aggregation, max_len=6)
    token, _ = grpo_loss(logprobs, adv, mask, **kwargs)
    sequence, _ = grpo_loss(logprobs, adv, mask, importance_ratio="sequence", **kwargs)
    (grad_token,) = torch.autograd.grad(token, logprobs)
    (grad_sequence,) = torch.autograd.grad(sequence, logprobs)
    assert token.item() == pytest.approx(sequence.item(), abs=1e-6)
    torch.testing.assert_close(grad_token, grad_sequence)


def test_sequence_ratio_needs_sequence_advantages():
    with pytest.raises(ValueError, match="one advantage per sequence"):
        grpo_loss(torch.zeros(1, 2), torch.ones(1, 2), MASK, importance_ratio="sequence")
    with pytest.raises(ValueError, match="importance_ratio"):
        GRPOLoss(importance_ratio="tokens")


# ---------------------------------------------------------------------------------------------
# All-masked sequences: 0 in every numerator; counted in the grpo / dr_grpo denominators (TRL).

# seq 0: 1 token, A = 2 (loss -2); seq 1: 3 tokens, A = -1 (loss 1 each); seq 2: no token, A = 5.
ALL_MASKED_MASK = torch.tensor([[True, False, False], [True, True, True], [False, False, False]])
ALL_MASKED_ADV = torch.tensor([2.0, -1.0, 5.0])


@pytest.mark.parametrize("importance_ratio", ["token", "sequence"])
@pytest.mark.parametrize(
    "aggregation, expected, count",
    [
        ("grpo", (-2.0 + 1.0 + 0.0) / 3, 3.0),  # TRL: mean over the 3 rows of the per-row token means
        ("dapo", (-2.0 + 3.0) / 4, 4.0),  # 4 tokens; the empty row adds none
        ("dr_grpo", (-2.0 + 3.0) / (3 * 5), 3.0),  # TRL: rows * max_completion_length
    ],
)
def test_all_masked_sequence_convention(aggregation, expected, count, importance_ratio):
    logprobs = torch.zeros(3, 3, requires_grad=True)
    loss, _ = grpo_loss(logprobs, ALL_MASKED_ADV, ALL_MASKED_MASK, aggregation=aggregation, max_len=5,
                        importance_ratio=importance_ratio)  # fmt: skip
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert torch.equal(logprobs.grad[2], torch.zeros(3))
    assert local_normalizer(ALL_MASKED_MASK, aggregation) == count
    assert GRPOLoss(aggregation=aggregation, max_len=5).local_normalizer(ALL_MASKED_MASK) == count
    # the same loss split over two "ranks" with the summed local counts as normalizer
    total = count
    parts = [
        grpo_loss(logprobs[rows], ALL_MASKED_ADV[rows], ALL_MASKED_MASK[rows], aggregation=aggregation, max_len=5,
                  importance_ratio=importance_ratio, normalizer=total)[0]
        for rows in (slice(0, 1), slice(1, 3))
    ]  # fmt: skip
    assert (parts[0] + parts[1]).item() == pytest.approx(expected)


def test_grpo_matches_trl_formula_with_an_all_masked_row():
    # TRL's "grpo": ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    g = torch.Generator().manual_seed(1)
    logprobs, old = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    mask = torch.rand(4, 5, generator=g) > 0.4
    mask[2] = False
    adv = torch.randn(4, generator=g)
    ratio = torch.exp(logprobs - old)
    per_token = -torch.minimum(ratio * adv[:, None], ratio.clamp(0.8, 1.2) * adv[:, None])
    trl = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    ours, _ = grpo_loss(logprobs, adv, mask, old)
    assert ours.item() == pytest.approx(trl.item(), rel=1e-6)


def test_local_normalizer_rejects_bad_input():
    with pytest.raises(ValueError, match="aggregation"):
        local_normalizer(MASK, "mean")
    with pytest.raises(ValueError, match="mask"):
        local_normalizer(torch.ones(3, dtype=torch.bool), "grpo")
