import math

import pytest
import torch
import yaml

from merr1.components.advantages import AdvantageGroups, group_normalize

# ---------------------------------------------------------------------------------------------
# group_normalize

S = math.sqrt(1.5)  # population std of [1, 2, 3] is sqrt(2/3): (x - 2) / sqrt(2/3)


@pytest.mark.parametrize(
    "values, expected",
    [
        ([1.0, 2.0, 3.0], [-S, 0.0, S]),
        ([0.0, 1.0], [-1.0, 1.0]),
        ([0.0, 0.0, 0.0, 1.0], [-1 / math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3), math.sqrt(3)]),
        ([5.0, 5.0, 5.0], [0.0, 0.0, 0.0]),  # all equal -> exactly 0
        ([0.1, 0.1, 0.1], [0.0, 0.0, 0.0]),  # mean not representable exactly -> still exactly 0
        ([7.0], [0.0]),  # G = 1
        ([1e30, -1e30], [1.0, -1.0]),
    ],
)
def test_group_normalize_table(values, expected):
    out = group_normalize(torch.tensor([values], dtype=torch.float64), eps=0.0 if len(values) > 1 else 1e-6)
    torch.testing.assert_close(out, torch.tensor([expected], dtype=torch.float64), rtol=1e-6, atol=1e-9)


def test_group_normalize_all_equal_is_exact_zero_never_nan():
    x = torch.tensor([[0.3, 0.3, 0.3, 0.3], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    out = group_normalize(x)
    assert torch.equal(out, torch.zeros_like(x))
    assert torch.equal(group_normalize(torch.ones(5, 1)), torch.zeros(5, 1))


def test_group_normalize_rows_independent_and_population_std():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 8, generator=g, dtype=torch.float64)
    out = group_normalize(x, eps=0.0)
    torch.testing.assert_close(out.mean(-1), torch.zeros(64, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.std(-1, unbiased=False), torch.ones(64, dtype=torch.float64))
    torch.testing.assert_close(out[3], group_normalize(x[3:4], eps=0.0)[0])


@pytest.mark.parametrize(
    "values, expected",
    [
        ([0.1, 0.1 + 1e-9], [0.0, 0.0]),  # std 5e-10 <= 1e-6 * 0.1: tied
        ([0.1, 0.1 + 1e-6], [-1 / 3, 1 / 3]),  # std 5e-7 > 1e-7: (x - mean) / (5e-7 + 1e-6)
        ([0.0, 0.0], [0.0, 0.0]),  # scale 0, std 0
        ([0.0, 1e-12], [-5e-13 / (5e-13 + 1e-6), 5e-13 / (5e-13 + 1e-6)]),  # std 5e-13 > 1e-18: kept
    ],
)
def test_group_normalize_ties_relative_to_the_scale(values, expected):
    out = group_normalize(torch.tensor([values], dtype=torch.float64))
    torch.testing.assert_close(out, torch.tensor([expected], dtype=torch.float64), rtol=1e-9, atol=0)


def _recall_of_masks(pred: list[list[int]], gt: list[int]) -> torch.Tensor:
    """Recall as ``set_scores`` computes it (float32 wheel mean) for per-wheel bitmasks."""
    from merr1.rewards.emotion_set import set_scores

    pred_masks = torch.tensor(pred, dtype=torch.int64)  # [G, K]
    gt_masks = torch.tensor([gt] * len(pred), dtype=torch.int64)
    return set_scores(pred_masks, gt_masks)["recall"][None]  # [1, G]


# Groups tied mathematically whose float32 rewards are not equal (issue 13). Hand sums:
# VideoAuto-R1: 0.9 * 0.8 + 1.1 * 1 + 0 = 1.82 = 0.9 * 2/3 + 1.1 * 0.2 + 1.
# EMO-R3: 0.8 * 1 + 0.05 * 0.5 + 0.05 * 0.5 + 0.1 = 0.95 = 0.8 * 1 + 0.05 * 1 + 0.05 * 0 + 0.1.
# MER-R1 recall, GT per wheel {c0}, {c0,c1,c2} x 3, {c0}: hits (1, 1/3, 1/3, 1/3, 1) and
# (0, 1, 0, 1, 1) both average 3/5; in float32 they are 0.59999996 and 0.6000000238.
TIED_GROUPS = {
    "videoauto_r1": (
        [{"name": "answers", "rewards": {"early_answer": 0.9, "final_answer": 1.1, "format": 1.0}}],
        lambda: {
            "early_answer": torch.tensor([[0.8, 2 / 3]]),
            "final_answer": torch.tensor([[1.0, 0.2]]),
            "format": torch.tensor([[0.0, 1.0]]),
        },
    ),
    "emo_r3": (
        [{"name": "total", "rewards": {"f1": 0.8, "text_recheck": 0.05, "modality_recheck": 0.05, "format": 0.1}}],
        lambda: {
            "f1": torch.tensor([[1.0, 1.0]]),
            "text_recheck": torch.tensor([[0.5, 1.0]]),
            "modality_recheck": torch.tensor([[0.5, 0.0]]),
            "format": torch.tensor([[1.0, 1.0]]),
        },
    ),
    "mer_r1_recall": (
        [{"name": "recall", "rewards": {"recall": 1.0}}, {"name": "format", "weight": 0.1, "rewards": {"format": 1.0}}],
        lambda: {
            "recall": _recall_of_masks(
                [[0b1, 0b1, 0b1, 0b1, 0b1], [0b0, 0b111, 0b0, 0b111, 0b1]] * 2, [0b1, 0b111, 0b111, 0b111, 0b1]
            ),
            "format": torch.ones(1, 4),
        },
    ),
}


@pytest.mark.parametrize("name", sorted(TIED_GROUPS))
def test_groups_tied_up_to_float_rounding_get_exactly_zero(name):
    groups, make = TIED_GROUPS[name]
    rewards = make()
    weights = groups[0]["rewards"]
    float32_sum = sum(w * rewards[r] for r, w in weights.items())  # what the old float32 path normalized
    assert float32_sum.amax() != float32_sum.amin()  # the case is a real rounding tie, not an exact one
    advantages, stats = AdvantageGroups(groups)(rewards)
    assert torch.equal(advantages, torch.zeros_like(advantages))
    assert stats[f"adv/{groups[0]['name']}/zero_std_frac"] == 1.0
    assert stats["adv/zero_std_frac"] == 1.0


def test_a_real_small_difference_is_not_a_tie():
    # final rewards 1 and 1 - 1e-3 / 1.1: sums 1.82 and 1.819, std 5e-4 >> 1e-6 * 1.82
    rewards = {
        "early_answer": torch.tensor([[0.8, 0.8]]),
        "final_answer": torch.tensor([[1.0, 1.0 - 1e-3 / 1.1]]),
        "format": torch.tensor([[0.0, 0.0]]),
    }
    groups = TIED_GROUPS["videoauto_r1"][0]
    advantages, _ = AdvantageGroups(groups)(rewards)
    expected = 5e-4 / (5e-4 + 1e-6)
    torch.testing.assert_close(advantages, torch.tensor([[expected, -expected]]), rtol=1e-4, atol=0)


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("group_size", [4, 8, 64])
def test_proposition_3_dual_advantage_correlation(group_size, discrete):
    # corr(R_R, A_dual) = corr(R_P, A_dual) = sqrt((1 + rho) / 2), A_dual = norm(R_R) + norm(R_P),
    # on random groups with varied rho; "discrete" rounds to multiples of 1/6 like set rewards.
    g = torch.Generator().manual_seed(group_size)
    num_groups = 500
    recall = torch.rand(num_groups, group_size, generator=g, dtype=torch.float64)
    mix = torch.rand(num_groups, 1, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.rand(num_groups, group_size, generator=g, dtype=torch.float64)
    precision = mix * recall + (1 - mix.abs()) * noise
    if discrete:
        recall, precision = (recall * 6).round() / 6, (precision.clamp(0, 1) * 6).round() / 6
    dual = group_normalize(recall) + group_normalize(precision)
    rho = _corr(recall, precision)
    expected = torch.sqrt((1 + rho) / 2)
    # Constant groups (rho undefined) and rho = -1 (A_dual vanishes) have no correlation to check.
    keep = (recall.std(-1) > 0) & (precision.std(-1) > 0) & (rho > -0.99)
    assert keep.sum() > num_groups // 2
    assert (_corr(recall, dual)[keep] - expected[keep]).abs().max() < 1e-3
    assert (_corr(precision, dual)[keep] - expected[keep]).abs().max() < 1e-3


@pytest.mark.parametrize("low_mean", ["recall", "precision"])
def test_proposition_2_f1_advantage_favours_larger_sigma_over_mu_squared(low_mean):
    # Same spread, different means: the objective with the smaller mean has the larger
    # sigma / mu^2, and the F1 advantage correlates more with it, in every group.
    g = torch.Generator().manual_seed(1)
    num_groups, group_size = 200, 16
    low = 0.2 + 0.2 * torch.rand(num_groups, group_size, generator=g, dtype=torch.float64)  # mu 0.3
    high = 0.7 + 0.2 * torch.rand(num_groups, group_size, generator=g, dtype=torch.float64)  # mu 0.8
    recall, precision = (low, high) if low_mean == "recall" else (high, low)
    f1 = 2 * recall * precision / (recall + precision)
    advantage = group_normalize(f1)
    ratio_r = recall.std(-1) / recall.mean(-1) ** 2
    ratio_p = precision.std(-1) / precision.mean(-1) ** 2
    favours_recall = _corr(recall, advantage) > _corr(precision, advantage)
    assert torch.equal(favours_recall, ratio_r > ratio_p)
    assert favours_recall.all() == (low_mean == "recall")


# ---------------------------------------------------------------------------------------------
# Every variant is a config: these YAML snippets (reward components, calibration, advantage
# groups) are the source for the recipe configs.

_R = "merr1.rewards"
_ADV = "_component_: merr1.components.advantages.AdvantageGroups"
_CALI = "_component_: merr1.components.calibration.SlowFastCalibration"
_MER_R1_REWARDS = f"""
rewards:
  - _component_: {_R}.RecallReward
  - _component_: {_R}.PrecisionReward
  - _component_: {_R}.FormatReward
    scheme: think_answer
    strict: false
  - _component_: {_R}.CalibrationRewards
"""

VARIANT_YAML = {
    "baseline": f"""
rewards:
  - _component_: {_R}.F1Reward
  - _component_: {_R}.FormatReward
    scheme: think_answer
advantage:
  {_ADV}
  groups:
    - {{name: base, weight: 1.0, rewards: {{f1: 1.0, format: 1.0}}}}
""",
    "trl_default": f"""
rewards:
  - _component_: {_R}.RecallReward
  - _component_: {_R}.PrecisionReward
  - _component_: {_R}.FormatReward
advantage:
  {_ADV}
  groups:
    - {{name: total, weight: 1.0, rewards: {{recall: 1.0, precision: 1.0, format: 1.0}}}}
""",
    "rd": f"""
rewards:
  - _component_: {_R}.RecallReward
  - _component_: {_R}.PrecisionReward
  - _component_: {_R}.FormatReward
advantage:
  {_ADV}
  groups:
    - {{name: rd, weight: 1.0, rewards: {{recall: 1.0, precision: 1.0, format: 1.0}}}}
""",
    "rd_ad": f"""
rewards:
  - _component_: {_R}.RecallReward
  - _component_: {_R}.PrecisionReward
  - _component_: {_R}.FormatReward
advantage:
  {_ADV}
  groups:
    - {{name: recall, weight: 1.0, rewards: {{recall: 1.0}}}}
    - {{name: precision, weight: 1.0, rewards: {{precision: 1.0}}}}
    - {{name: format, weight: 0.1, rewards: {{format: 1.0}}}}
""",
    "mer_r1": _MER_R1_REWARDS + f"""
calibration:
  {_CALI}
  confidence: category
advantage:
  {_ADV}
  groups:
    - {{name: recall, weight: 1.0, rewards: {{recall: 1.0}}}}
    - {{name: precision, weight: 1.0, rewards: {{precision: 1.0}}}}
    - {{name: cali_pos, weight: 0.1, rewards: {{cali_pos: 1.0}}}}
    - {{name: cali_neg, weight: 0.1, rewards: {{cali_neg: 1.0}}}}
    - {{name: format, weight: 0.1, rewards: {{format: 1.0}}}}
""",
    "a1_word_level": _MER_R1_REWARDS + f"""
calibration:
  {_CALI}
  confidence: word
advantage:
  {_ADV}
  groups:
    - {{name: recall, weight: 1.0, rewards: {{recall: 1.0}}}}
    - {{name: precision, weight: 1.0, rewards: {{precision: 1.0}}}}
    - {{name: cali_pos, weight: 0.1, rewards: {{cali_pos: 1.0}}}}
    - {{name: cali_neg, weight: 0.1, rewards: {{cali_neg: 1.0}}}}
    - {{name: format, weight: 0.1, rewards: {{format: 1.0}}}}
""",
    "a2_no_cali_neg": _MER_R1_REWARDS + f"""
calibration:
  {_CALI}
  confidence: category
advantage:
  {_ADV}
  groups:
    - {{name: recall, weight: 1.0, rewards: {{recall: 1.0}}}}
    - {{name: precision, weight: 1.0, rewards: {{precision: 1.0}}}}
    - {{name: cali_pos, weight: 0.1, rewards: {{cali_pos: 1.0}}}}
    - {{name: format, weight: 0.1, rewards: {{format: 1.0}}}}
""",
    "b1_reward_space_calibration": _MER_R1_REWARDS + f"""
calibration:
  {_CALI}
  confidence: category
advantage:
  {_ADV}
  groups:
    - {{name: recall, weight: 1.0, rewards: {{recall: 1.0}}}}
    - {{name: precision, weight: 1.0, rewards: {{precision: 1.0}}}}
    - {{name: cali, weight: 0.1, rewards: {{cali_pos: 1.0, cali_neg: 1.0}}}}
    - {{name: format, weight: 0.1, rewards: {{format: 1.0}}}}
""",
    "b2_mixed_before_normalization": _MER_R1_REWARDS + f"""
calibration:
  {_CALI}
  confidence: category
advantage:
  {_ADV}
  groups:
    - {{name: dual_cali, weight: 1.0, rewards: {{recall: 1.0, precision: 1.0, cali_pos: 0.1, cali_neg: 0.1}}}}
    - {{name: format, weight: 0.1, rewards: {{format: 1.0}}}}
""",
    "videoauto_r1": f"""
rewards:
  - _component_: {_R}.VideoAutoAnswerRewards
    metric: f1
  - _component_: {_R}.FormatReward
    scheme: answer_think_answer
advantage:
  {_ADV}
  groups:
    - {{name: answers, weight: 1.0, rewards: {{early_answer: 0.9, final_answer: 1.1, format: 1.0}}}}
""",
    "emo_r3": f"""
rewards:
  - _component_: {_R}.F1Reward
  - _component_: {_R}.ReflectiveRewards
  - _component_: {_R}.FormatReward
    scheme: emo_r3_steps
advantage:
  {_ADV}
  groups:
    - {{name: total, weight: 1.0, rewards: {{f1: 0.8, text_recheck: 0.05, modality_recheck: 0.05, format: 0.1}}}}
""",
    "demo": f"""
rewards:
  - _component_: {_R}.RecallReward
    duplicate_penalty: true
  - _component_: {_R}.PrecisionReward
    duplicate_penalty: true
  - _component_: {_R}.FormatReward
    scheme: think_answer
    strict: true
advantage:
  {_ADV}
  groups:
    - {{name: total, weight: 1.0, rewards: {{recall: 1.0, precision: 1.0, format: 0.1}}}}
""",
}


def variant_groups(variant: str) -> list[dict]:
    return yaml.safe_load(VARIANT_YAML[variant])["advantage"]["groups"]


def n(x):
    return group_normalize(x)


def dual(r):
    """A_dual = norm(R_R) + norm(R_P)."""
    return n(r["recall"]) + n(r["precision"])


# The textbook formula of each variant, written independently of the config.
VARIANT_FORMULA = {
    "baseline": lambda r: n(r["f1"] + r["format"]),
    "trl_default": lambda r: n(r["recall"] + r["precision"] + r["format"]),
    "rd": lambda r: n(r["recall"] + r["precision"] + r["format"]),
    "rd_ad": lambda r: n(r["recall"]) + n(r["precision"]) + 0.1 * n(r["format"]),
    "mer_r1": lambda r: dual(r) + 0.1 * (n(r["cali_pos"]) + n(r["cali_neg"])) + 0.1 * n(r["format"]),
    "a1_word_level": lambda r: dual(r) + 0.1 * (n(r["cali_pos"]) + n(r["cali_neg"])) + 0.1 * n(r["format"]),
    "a2_no_cali_neg": lambda r: dual(r) + 0.1 * n(r["cali_pos"]) + 0.1 * n(r["format"]),
    "b1_reward_space_calibration": lambda r: dual(r) + 0.1 * n(r["cali_pos"] + r["cali_neg"]) + 0.1 * n(r["format"]),
    "b2_mixed_before_normalization": lambda r: (
        n(r["recall"] + r["precision"] + 0.1 * r["cali_pos"] + 0.1 * r["cali_neg"]) + 0.1 * n(r["format"])
    ),
    "videoauto_r1": lambda r: n(0.9 * r["early_answer"] + 1.1 * r["final_answer"] + r["format"]),
    "emo_r3": lambda r: n(
        0.8 * r["f1"] + 0.05 * r["text_recheck"] + 0.05 * r["modality_recheck"] + 0.1 * r["format"]
    ),
    "demo": lambda r: n(r["recall"] + r["precision"] + 0.1 * r["format"]),
}

REWARD_NAMES = (
    "recall", "precision", "f1", "format", "cali_pos", "cali_neg",
    "early_answer", "final_answer", "text_recheck", "modality_recheck",
)


@pytest.fixture
def random_rewards():
    g = torch.Generator().manual_seed(0)
    rewards = {name: torch.rand(16, 4, generator=g) for name in REWARD_NAMES}
    rewards["format"] = (rewards["format"] > 0.3).float()
    rewards["cali_pos"] = rewards["cali_pos"] - 0.5
    rewards["cali_neg"][0] = 0.25  # a constant group
    return rewards


@pytest.mark.parametrize("variant", sorted(VARIANT_YAML))
def test_variant_config_matches_formula(variant, random_rewards):
    advantage = AdvantageGroups(variant_groups(variant))
    out, stats = advantage(random_rewards)
    assert out.shape == (16, 4)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, VARIANT_FORMULA[variant](random_rewards), rtol=1e-5, atol=1e-5)
    for group in advantage.groups:
        assert f"adv/{group.name}/zero_std_frac" in stats


def test_variants_differ_where_the_paper_says():
    cfg = {name: variant_groups(name) for name in VARIANT_YAML}
    assert cfg["a1_word_level"] == cfg["mer_r1"]  # A1 changes the calibration, not the groups
    assert cfg["trl_default"] == [dict(cfg["rd"][0], name="total")]
    assert {g["name"] for g in cfg["mer_r1"]} - {g["name"] for g in cfg["a2_no_cali_neg"]} == {"cali_neg"}


def test_one_group_is_trl_sum_then_normalize(random_rewards):
    advantage = AdvantageGroups([{"name": "all", "rewards": {"recall": 2.0, "format": 0.5}}])
    out, _ = advantage(random_rewards)
    torch.testing.assert_close(out, n(2.0 * random_rewards["recall"] + 0.5 * random_rewards["format"]))


def test_stats_values():
    rewards = {"a": torch.tensor([[1.0, 1.0], [0.0, 2.0]]), "b": torch.tensor([[3.0, 3.0], [3.0, 3.0]])}
    groups = [{"name": "ga", "rewards": {"a": 1.0}}, {"name": "gb", "weight": 0.5, "rewards": {"b": 1.0}}]
    advantage = AdvantageGroups(groups)
    out, stats = advantage(rewards)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0], [-1.0, 1.0]]), atol=1e-5, rtol=0)
    assert stats["adv/ga/reward_mean"] == pytest.approx(1.0)
    assert stats["adv/ga/reward_std"] == pytest.approx(0.5)  # (0 + 1) / 2
    assert stats["adv/ga/zero_std_frac"] == pytest.approx(0.5)
    assert stats["adv/gb/zero_std_frac"] == pytest.approx(1.0)
    assert stats["adv/zero_std_frac"] == pytest.approx(0.5)


def test_all_correct_and_all_wrong_groups_get_zero_advantage():
    all_right_all_wrong = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    rewards = {"recall": all_right_all_wrong, "precision": all_right_all_wrong.clone()}
    out, _ = AdvantageGroups(variant_groups("rd_ad")[:2])(rewards)
    assert torch.equal(out, torch.zeros(2, 3))


def test_group_size_one():
    out, _ = AdvantageGroups([{"name": "g", "rewards": {"r": 1.0}}])({"r": torch.tensor([[0.3], [0.9]])})
    assert torch.equal(out, torch.zeros(2, 1))


@pytest.mark.parametrize(
    "groups, match",
    [
        ([], "non-empty list"),
        ({"name": "g"}, "non-empty list"),
        ([{"name": "g"}], "rewards"),
        ([{"name": "g", "rewards": {}}], "rewards"),
        ([{"rewards": {"r": 1.0}}], "name"),
        ([{"name": "g", "rewards": {"r": 1.0}, "scale": 2}], "unknown keys"),
        ([{"name": "g", "rewards": {"r": 1.0}}, {"name": "g", "rewards": {"r": 1.0}}], "unique"),
    ],
)
def test_bad_group_config(groups, match):
    with pytest.raises(ValueError, match=match):
        AdvantageGroups(groups)


@pytest.mark.parametrize(
    "rewards, match",
    [
        ({"x": torch.zeros(2, 3)}, "need rewards"),
        ({"r": torch.zeros(6)}, r"\[num_prompts, G\]"),
        ({"r": torch.tensor([[0.0, float("nan")]])}, "non-finite"),
    ],
)
def test_bad_rewards(rewards, match):
    with pytest.raises(ValueError, match=match):
        AdvantageGroups([{"name": "g", "rewards": {"r": 1.0}}])(rewards)


def test_shape_mismatch_between_rewards():
    with pytest.raises(ValueError, match="shape"):
        advantage = AdvantageGroups([{"name": "g", "rewards": {"a": 1.0, "b": 1.0}}])
        advantage({"a": torch.zeros(2, 3), "b": torch.zeros(2, 4)})


def _variant_batch():
    from merr1.components.calibration import CalibrationInputs
    from merr1.rewards import RewardBatch

    slow = "<think>she smiles</think><answer>happy, sad</answer>"
    boxed = r"\boxed{Let's analyze}<think>she smiles</think>\boxed{happy}"
    steps = "<step1>a smile</step1><step2>joy</step2><step3>positive</step3><answer>happy</answer>"
    responses = [[slow, boxed, steps, "junk"], [slow, slow, boxed, steps]]
    calibration = CalibrationInputs(
        response_index=torch.tensor([0, 0, 4, 5]),
        category_mask=torch.tensor([[8, 32, 4, 1, 16], [4, 8, 32, 8, 4], [8, 32, 4, 1, 16], [8, 32, 4, 1, 16]]),
        gap=torch.tensor([[0.5] * 5, [-0.2] * 5, [0.1] * 5, [0.3] * 5]),
        num_responses=8,
    )
    def reflective_generate(queries):
        return ["happy" if q.kind == "text" else "yes" for q in queries]

    extras = {"calibration": calibration, "reflective_generate": reflective_generate}
    return RewardBatch(responses=responses, labels=[["happy"], ["sad", "happy"]], extras=extras)


@pytest.mark.parametrize("variant", sorted(VARIANT_YAML))
def test_variant_yaml_instantiates_and_runs(variant):
    # torchtune's instantiate CALLS each _component_ with the YAML keys, as the recipes will.
    from omegaconf import OmegaConf
    from torchtune import config

    from merr1.rewards import merge_outputs

    cfg = OmegaConf.create(VARIANT_YAML[variant])
    rewards = [config.instantiate(node) for node in cfg.rewards]
    advantage = config.instantiate(cfg.advantage)
    batch = _variant_batch()
    merged = merge_outputs([reward(batch) for reward in rewards])
    assert advantage.reward_names <= set(merged.rewards)
    out, stats = advantage(merged.rewards)
    assert out.shape == (2, 4) and torch.isfinite(out).all()
    if "calibration" in cfg:
        calibration = config.instantiate(cfg.calibration)
        assert calibration.confidence == ("word" if variant == "a1_word_level" else "category")
