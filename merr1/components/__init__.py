"""Building blocks the recipes instantiate from YAML."""
