import json
from typing import Annotated, Literal

import pytest

from merr1.components.config_checks import (
    Above,
    AtLeast,
    Component,
    accepted_parameters,
    check_config,
    expand_list_item_overrides,
    forwards_kwargs_to,
    import_component,
)

HERE = __name__  # components below are importable as f"{HERE}.<name>"


def scorer(scheme: Literal["a", "b"] = "a", weight: float = 1.0, strict: bool = False, name: str | None = None):
    return (scheme, weight, strict, name)


def needs_lr(model, lr: float, betas: tuple[float, ...] = (0.9, 0.99)):
    return (model, lr, betas)


class Target:
    def __init__(self, tokenizer, path: str, size: int = 3, inner=None):
        pass


@forwards_kwargs_to(Target)
def builder(tokenizer, path: str = "x", **kwargs):
    return Target(tokenizer, path, **kwargs)


def anything(**kwargs):
    return kwargs


SPEC = {
    "seed": int,
    "lr_scale": Annotated[float, Above(0)],
    "steps": Annotated[int, AtLeast(1)] | None,
    "device": Literal["cpu", "cuda"],
    "section": {"k": int, "names": list[str] | None},
    "reward": Component(),
    "rewards": [Component()],
    "optimizer": Component(positional=1),
    "data": Component(positional=1, keywords=("size",)),
    "extra": Component(optional=True),
}


def good() -> dict:
    return {
        "seed": 0,
        "lr_scale": 2,  # an int is a fine float
        "steps": None,
        "device": "cpu",
        "section": {"k": 1, "names": ["a"]},
        "reward": {"_component_": f"{HERE}.scorer", "scheme": "b", "weight": 0.5},
        "rewards": [{"_component_": f"{HERE}.scorer"}, {"_component_": f"{HERE}.anything", "whatever": [1]}],
        "optimizer": {"_component_": f"{HERE}.needs_lr", "lr": 1e-4, "betas": [0.9, 0.95]},
        "data": {"_component_": f"{HERE}.builder", "path": "p"},
        "extra": None,
    }


def test_a_good_config_passes():
    check_config(good(), SPEC)


def _problems(cfg) -> list[str]:
    with pytest.raises(ValueError) as err:
        check_config(cfg, SPEC)
    lines = str(err.value).splitlines()
    assert lines[0].startswith("config: ") and "nothing was built" in lines[0]
    return [line.strip() for line in lines[1:]]


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda c: c.update(sead=1), "sead: unknown key; the config accepts data, device, extra, lr_scale,"),
        (lambda c: c.pop("seed"), "seed: missing (expected an int)"),
        (lambda c: c.update(seed="abc"), "seed: 'abc' is not an int"),
        (lambda c: c.update(seed=True), "seed: True is not an int"),
        (lambda c: c.update(lr_scale=0), "lr_scale: 0 must be > 0"),
        (lambda c: c.update(steps=0), "steps: 0 must be >= 1"),
        (lambda c: c.update(steps="abc"), "steps: 'abc' is not an int (AtLeast(minimum=1)) or null"),
        (lambda c: c.update(device="tpu"), "device: 'tpu' is not one of 'cpu', 'cuda'"),
        (lambda c: c["section"].update(kk=2), "section.kk: unknown key; section accepts k, names"),
        (lambda c: c["section"].update(names="a"), "section.names: 'a' is not a list of a string or null"),
        (lambda c: c["section"].update(names=["a", 3]), "section.names: ['a', 3] is not a list of a string or null"),
        (lambda c: c["reward"].update(schema="a"), f"reward.schema: unknown key; {HERE}.scorer accepts name, scheme, strict, weight"),
        (lambda c: c["reward"].update(scheme="c"), f"reward.scheme: 'c' is not one of 'a', 'b' ({HERE}.scorer takes scheme: one of 'a', 'b')"),
        (lambda c: c["reward"].update(strict=1), "reward.strict: 1 is not a bool"),
        (lambda c: c["rewards"][0].update(weight="fast"), "rewards.0.weight: 'fast' is not a number"),
        (lambda c: c["optimizer"].update(lr="fast"), f"optimizer.lr: 'fast' is not a number ({HERE}.needs_lr takes lr: a number)"),
        (lambda c: c["optimizer"].pop("lr"), f"optimizer.lr: missing (required by {HERE}.needs_lr)"),
        (lambda c: c["optimizer"].update(model=1), f"optimizer.model: unknown key; {HERE}.needs_lr accepts betas, lr"),
        (lambda c: c["data"].update(size=4), "data.size: set by the recipe, remove it from the config"),
        (lambda c: c["data"].update(inner={"_component_": f"{HERE}.scorer", "weight": "x"}), "data.inner.weight: 'x' is not a number"),
        (lambda c: c["data"].update(colour=1), f"data.colour: unknown key; {HERE}.builder accepts inner, path"),
        (lambda c: c.update(reward={"scheme": "a"}), "reward: {'scheme': 'a'} is not a `_component_` section"),
        (lambda c: c.update(extra={"_component_": f"{HERE}.nope"}), "extra._component_: cannot import"),
        (lambda c: c.update(rewards={"a": 1}), "rewards: {'a': 1} is not a list"),
    ],
)
def test_each_problem_names_the_full_dotted_key_the_value_and_what_is_accepted(edit, expected):
    cfg = good()
    edit(cfg)
    problems = _problems(cfg)
    assert any(p.startswith(expected) for p in problems), problems


def test_all_problems_are_reported_together():
    cfg = good()
    cfg["seed"] = "x"
    cfg["section"]["kk"] = 1
    cfg["optimizer"]["lr"] = "fast"
    assert len(_problems(cfg)) == 3


def test_forwarded_kwargs_and_positional_parameters():
    params, takes_any = accepted_parameters(builder, positional=1)
    assert sorted(params) == ["inner", "path", "size"] and not takes_any  # tokenizer: passed by the recipe
    _, takes_any = accepted_parameters(anything)
    assert takes_any


def test_moved_module_paths_keep_their_message():
    with pytest.raises(ModuleNotFoundError, match="moved to merr1.components.data.prompts"):
        import_component("merr1.components.prompts.build_prompt")
    assert import_component("merr1.components.data.prompts.build_prompt").__name__ == "build_prompt"


def test_real_recipe_components_are_checked_against_their_signatures():
    spec = {"optimizer": Component(positional=1), "loss": Component(), "dataset": Component(positional=1)}
    cfg = {
        "optimizer": {"_component_": "merr1.components.optim.build_adamw", "lr": 1e-4, "weight_decay": 0.0},
        "loss": {"_component_": "merr1.components.loss.GRPOLoss", "aggregation": "grpo", "beta": 0.0},
        "dataset": {"_component_": "merr1.components.data.mer_caption_plus_sample", "split": "rl", "max_seq_len": 512},
    }
    check_config(cfg, spec)
    cfg["loss"]["aggregation"] = "mean"
    cfg["dataset"]["max_seq_length"] = 512
    with pytest.raises(ValueError) as err:
        check_config(cfg, spec)
    assert "loss.aggregation: 'mean' is not one of 'grpo', 'dapo', 'dr_grpo'" in str(err.value)
    assert "dataset.max_seq_length: unknown key; merr1.components.data.mer_caption_plus_sample accepts" in str(err.value)


# --- list-item overrides -------------------------------------------------------------------------

YAML = """
lr: 1e-4
rewards:
  - _component_: a.Recall
    duplicate_penalty: true
  - _component_: a.Format
    scheme: think_answer
    nested: {x: 1}
generation:
  stop_strings: ["</answer>"]
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(YAML)
    return str(path)


def _list_override(argv: list[str], key: str):
    prefix = f"{key}="
    (value,) = [a[len(prefix):] for a in argv if a.startswith(prefix)]
    return json.loads(value)


@pytest.mark.parametrize(
    "overrides, key, expected",
    [
        (["rewards.1.scheme=answer"], "rewards", [{"_component_": "a.Recall", "duplicate_penalty": True},
                                                  {"_component_": "a.Format", "scheme": "answer", "nested": {"x": 1}}]),
        (["rewards.0.target_words=3", "~rewards.0.duplicate_penalty"], "rewards",
         [{"_component_": "a.Recall", "target_words": 3}, {"_component_": "a.Format", "scheme": "think_answer", "nested": {"x": 1}}]),
        (["rewards.1.nested.x=2.5"], "rewards", [{"_component_": "a.Recall", "duplicate_penalty": True},
                                                 {"_component_": "a.Format", "scheme": "think_answer", "nested": {"x": 2.5}}]),
        (["rewards.0=b.Other"], "rewards", [{"_component_": "b.Other", "duplicate_penalty": True},
                                            {"_component_": "a.Format", "scheme": "think_answer", "nested": {"x": 1}}]),
        (["~rewards.0"], "rewards", [{"_component_": "a.Format", "scheme": "think_answer", "nested": {"x": 1}}]),
        (["generation.stop_strings.0=</box>"], "generation.stop_strings", ["</box>"]),
    ],
)
def test_list_item_overrides_become_one_whole_list_override(config_file, overrides, key, expected):
    argv = ["recipe.py", "--config", config_file, "lr=1e-3", *overrides]
    out = expand_list_item_overrides(argv)
    assert out[:4] == argv[:4]  # other arguments untouched, in order
    assert not any(o in out for o in overrides)
    assert _list_override(out, key) == expected


def test_overrides_without_list_items_are_unchanged(config_file):
    argv = ["recipe.py", "--config", config_file, "lr=1e-3", "rewards=[]", "~generation"]
    assert expand_list_item_overrides(argv) == argv


@pytest.mark.parametrize(
    "override, message",
    [
        ("rewards.5.scheme=x", "rewards has 2 items"),
        ("rewards.0.nested.x=1", "rewards.0 has no key 'nested'"),
        ("~rewards.1.missing", "no key 'missing' to remove"),
    ],
)
def test_bad_list_item_overrides_say_what_is_wrong(config_file, override, message):
    with pytest.raises(ValueError, match=message):
        expand_list_item_overrides(["recipe.py", "--config", config_file, override])
