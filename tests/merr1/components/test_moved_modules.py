import importlib

import pytest

from merr1.components import MOVED_MODULES


@pytest.mark.parametrize("old, new", sorted(MOVED_MODULES.items()))
def test_old_module_paths_fail_naming_the_new_module(old, new):
    importlib.import_module(new)  # the new path works
    with pytest.raises(ModuleNotFoundError, match=f"{old} moved to {new}"):
        importlib.import_module(old)


def test_old_yaml_component_path_names_the_new_one():
    from omegaconf import OmegaConf
    from torchtune import config

    with pytest.raises(Exception, match="merr1.components.data.prompts"):
        config.instantiate(OmegaConf.create({"_component_": "merr1.components.prompts.build_chat_prompt"}))


def test_data_package_reexports_the_yaml_targets():
    from merr1.components import data

    for name in ("mer_caption_plus", "mer_caption_plus_sample", "mer_unibench", "mer_unibench_sample", "SFTCollator"):
        assert callable(getattr(data, name)), name
