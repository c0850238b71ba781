"""Reward components for GRPO (YAML ``_component_`` targets)."""
