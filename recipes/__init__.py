# This file makes `recipes` a regular package. torchtune's wheel installs its own top-level
# `recipes` package into site-packages; with this file and the repo root first on sys.path,
# `tune run recipes/<recipe>.py` reaches ours (see tune_cli_ext.py and the README).
