"""Group-normalized advantages and advantage groups (METHOD section 4; the contract: docs/advantages.md).

``group_normalize`` is GRPO's per-prompt normalization A = (x - mean) / (std + eps) over the G
samples of a prompt (the last dimension). ``std`` is the POPULATION standard deviation
(``unbiased=False``): it is defined for G = 1 (where it is 0) and it makes each normalized reward
have unit population variance, which is what Proposition 3 uses (correlations are scale-free, so
the proposition holds with either choice up to the eps).

Ties (issue 13). A group whose values are equal up to float rounding gets exactly 0, never NaN
and never a rounding artefact: the statistics are computed in float64, and a group whose std is
at most ``TIE_RTOL`` (1e-6) times its scale counts as tied. Without this, rewards that are equal
mathematically but not in float32 got advantages of order 0.1 from a std of ~1e-8 and the 1e-6
eps (VideoAuto-R1, G = 2: 0.9 * [0.8, 2/3] + 1.1 * [1, 0.2] + [0, 1] = [1.82, 1.82] gave
A = [0, 0.11]). The scale is the largest magnitude of the terms that made the values: in
``AdvantageGroups`` sum_r |w_r| max_g |R_r| per prompt (the bound on what float32 rounding of
the rewards can perturb), for a bare ``group_normalize`` call max_g |x|. 1e-6 is ~17 float32 ulps
of the scale: above the rounding of a few float32 rewards and their weighted sum, and far below
any difference a reward means (set rewards move in steps of >= 1/40 of their scale; an
SFCC gap difference of 1e-6 of its size is below the precision of the log-probs it comes from).

``AdvantageGroups`` is the one mechanism behind every variant. A config lists groups

    - {name: recall, weight: 1.0, rewards: {recall: 1.0}}
    - {name: format, weight: 0.1, rewards: {format: 1.0}}

Within a group the rewards are summed with their weights (reward space); the sum is normalized
per prompt (``group_normalize``); the final advantage is the weighted sum of the normalized
groups (advantage space):

    A = sum_g w_g * norm(sum_r w_{g,r} R_r)

Paper variants as configs (the fixtures in ``tests/merr1/components/test_advantages.py``):

- Baseline (AffectGPT-R1): one group {f1: 1, format: 1}.
- TRL default ("sum the rewards, then normalize"): one group holding every reward with its weight.
- RD: one group {recall: 1, precision: 1, format: 1}.
- RD+AD: groups {recall}, {precision}, {format} with weights 1, 1, 0.1 (A_dual + 0.1 A_fmt).
- MER-R1: RD+AD plus groups {cali_pos} and {cali_neg} with weight 0.1 each
  (A = A_dual + 0.1 (norm(R+) + norm(R-)) + 0.1 A_fmt).
- A1 (word-level confidence): the MER-R1 groups; the difference is in how the calibration rewards
  are computed (``confidence="word"`` in ``merr1.components.calibration``).
- A2 (no precision calibration): MER-R1 without the {cali_neg} group.
- B1 and B2 are described in one sentence each in the paper ("calibration in reward space";
  "dual and calibration rewards added before normalization"). Our reading:
  B1 = the calibration rewards are combined in REWARD space into one calibration reward
  R+ + R-, normalized once, i.e. one group {cali_pos: 1, cali_neg: 1} with weight 0.1 next to the
  disentangled dual and format groups (A = A_dual + 0.1 norm(R+ + R-) + 0.1 A_fmt);
  B2 = the dual and calibration rewards are all added before a single normalization, i.e. one
  group {recall: 1, precision: 1, cali_pos: 0.1, cali_neg: 0.1} plus {format} with weight 0.1
  (A = norm(R_R + R_P + 0.1 R+ + 0.1 R-) + 0.1 A_fmt). The other plausible reading of B1,
  calibration added to each dual branch (A = norm(R_R + 0.1 R+) + norm(R_P + 0.1 R-) + 0.1 A_fmt),
  is equally a config (groups {recall: 1, cali_pos: 0.1} and {precision: 1, cali_neg: 0.1}).
- VideoAuto-R1: one group {early_answer: 0.9, final_answer: 1.1, format: 1.0}.
- EMO-R3: one group {f1: 0.8, text_recheck: 0.05, modality_recheck: 0.05, format: 0.1}.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


# A group whose std is at most TIE_RTOL times its scale is tied (module docstring).
TIE_RTOL = 1e-6


def group_normalize(
    x: torch.Tensor, eps: float = 1e-6, scale: torch.Tensor | None = None, tie_rtol: float = TIE_RTOL
) -> torch.Tensor:
    """Normalize over the last dimension: (x - mean) / (std + eps), population std, in float64.

    Args:
        x: rewards, ``[..., G]`` (e.g. ``[num_prompts, G]``).
        eps: added to the std (keeps near-constant groups finite).
        scale: per-group magnitude the tie test is relative to, ``[..., 1]`` (or broadcastable);
            default max_g |x|.
        tie_rtol: a group with std <= ``tie_rtol * scale`` is tied (module docstring).

    Returns:
        Same shape as ``x``, float32 (float64 kept). Exactly 0 for every tied group: all values
        equal (G = 1 and all-zero groups included) or equal up to float rounding.
    """
    if x.dim() == 0:
        raise ValueError("group_normalize needs at least one dimension (the G samples of a prompt)")
    out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.double()
    mean = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True, unbiased=False)
    if scale is None:
        scale = x.abs().amax(dim=-1, keepdim=True)
    tied = std <= tie_rtol * scale.double()  # [..., 1]
    normalized = (x - mean) / (std + eps)
    return torch.where(tied, torch.zeros_like(normalized), normalized).to(out_dtype)


def tied_groups(x: torch.Tensor, scale: torch.Tensor | None = None, tie_rtol: float = TIE_RTOL) -> torch.Tensor:
    """Which groups ``group_normalize`` sets to 0 (no learning signal). # [..., G] -> [...] bool"""
    x = x.double()
    scale = x.abs().amax(dim=-1, keepdim=True) if scale is None else scale.double()
    return (x.std(dim=-1, keepdim=True, unbiased=False) <= tie_rtol * scale).squeeze(-1)


@dataclass(frozen=True)
class AdvantageGroup:
    """One advantage group: ``weight * norm(sum_r rewards[r] * R_r)``."""

    name: str
    weight: float
    rewards: tuple[tuple[str, float], ...]


class AdvantageGroups:
    """Advantage = weighted sum of group-normalized reward groups (module docstring).

    Args:
        groups: list of ``{name, weight, rewards: {reward_name: weight}}`` (plain dicts or YAML);
            ``weight`` defaults to 1.0.
        eps: ``group_normalize`` epsilon.

    Call with ``rewards: dict[str, Tensor]`` (reward name -> ``[num_prompts, G]``); returns
    ``(advantages [num_prompts, G] float32, stats)``. ``stats`` holds, per group ``name``:
    ``adv/{name}/reward_mean`` and ``adv/{name}/reward_std`` (the group's summed reward, mean of the
    per-prompt population std) and ``adv/{name}/zero_std_frac`` (fraction of prompts whose group
    reward is tied, i.e. contribute no signal), plus ``adv/zero_std_frac`` for the final advantage.
    Sums and normalization run in float64; the scale of the tie test is sum_r |w_r| max_g |R_r|.
    """

    def __init__(self, groups: Sequence[Mapping], eps: float = 1e-6) -> None:
        if isinstance(groups, Mapping) or not isinstance(groups, Sequence) or len(groups) == 0:
            raise ValueError("advantage groups must be a non-empty list of {name, weight, rewards} entries")
        parsed: list[AdvantageGroup] = []
        for i, group in enumerate(groups):
            if not isinstance(group, Mapping):
                raise ValueError(f"advantage group #{i} must be a mapping, got {type(group).__name__}")
            unknown = set(group) - {"name", "weight", "rewards"}
            if unknown:
                raise ValueError(
                    f"advantage group #{i}: unknown keys {sorted(unknown)} (allowed: name, weight, rewards)"
                )
            name = group.get("name")
            rewards = group.get("rewards")
            if not isinstance(name, str) or not name:
                raise ValueError(f"advantage group #{i} needs a non-empty string 'name'")
            if not isinstance(rewards, Mapping) or len(rewards) == 0:
                raise ValueError(
                    f"advantage group {name!r} needs a non-empty 'rewards' mapping {{reward_name: weight}}"
                )
            parsed.append(
                AdvantageGroup(
                    name=name,
                    weight=float(group.get("weight", 1.0)),
                    rewards=tuple((str(r), float(w)) for r, w in rewards.items()),
                )
            )
        names = [g.name for g in parsed]
        if len(set(names)) != len(names):
            raise ValueError(f"advantage group names must be unique, got {names}")
        self.groups: tuple[AdvantageGroup, ...] = tuple(parsed)
        self.eps = eps

    @property
    def reward_names(self) -> frozenset[str]:
        """Every reward name some group needs."""
        return frozenset(r for g in self.groups for r, _ in g.rewards)

    def __call__(self, rewards: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        missing = sorted(self.reward_names - set(rewards))
        if missing:
            raise ValueError(f"advantage groups need rewards {missing}; got {sorted(rewards)}")
        shape = None
        for name in sorted(self.reward_names):
            value = rewards[name]
            if value.dim() != 2:
                raise ValueError(f"reward {name!r} must be [num_prompts, G], got shape {tuple(value.shape)}")
            if shape is None:
                shape = value.shape
            elif value.shape != shape:
                raise ValueError(f"reward {name!r} has shape {tuple(value.shape)}, others {tuple(shape)}")
            if not torch.isfinite(value).all():
                raise ValueError(f"reward {name!r} has non-finite values")

        advantages = None
        stats: dict[str, float] = {}
        for group in self.groups:
            # float64: equal rewards must sum to equal values (ties, module docstring)
            summed = sum(w * rewards[r].double() for r, w in group.rewards)  # [num_prompts, G]
            scale = sum(abs(w) * rewards[r].double().abs().amax(-1, keepdim=True) for r, w in group.rewards)  # [num_prompts, 1]
            normalized = group_normalize(summed, self.eps, scale)  # [num_prompts, G] float64
            advantages = group.weight * normalized if advantages is None else advantages + group.weight * normalized
            stats[f"adv/{group.name}/reward_mean"] = summed.mean().item()
            stats[f"adv/{group.name}/reward_std"] = summed.std(-1, unbiased=False).mean().item()
            stats[f"adv/{group.name}/zero_std_frac"] = tied_groups(summed, scale).double().mean().item()
        assert advantages is not None
        stats["adv/zero_std_frac"] = (advantages.abs().amax(-1) == 0).double().mean().item()
        return advantages.float(), stats
