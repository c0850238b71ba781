"""Building blocks the recipes instantiate from YAML.

Modules that moved keep failing loudly at their old path: importing one (directly or through a
YAML ``_component_``) raises ``ModuleNotFoundError`` naming the new module.
"""

import importlib.abc
import sys

# old module -> new module (issue 11: the data modules became the ``data`` package; the HF-weights
# reader/writer is named for what it does).
MOVED_MODULES = {
    "merr1.components.data_collate": "merr1.components.data.collate",
    "merr1.components.data_media": "merr1.components.data.media",
    "merr1.components.data_sample": "merr1.components.data.sample",
    "merr1.components.prompts": "merr1.components.data.prompts",
    "merr1.components.checkpoint_io": "merr1.components.hf_checkpoint",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Refuses the old paths of moved modules with a message naming the new one."""

    def find_spec(self, fullname, path=None, target=None):
        new = MOVED_MODULES.get(fullname)
        if new is None:
            return None
        raise ModuleNotFoundError(
            f"{fullname} moved to {new}: update the import (or the YAML `_component_` path, "
            f"e.g. {new}.<name>)",
            name=fullname,
        )


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModuleFinder())
