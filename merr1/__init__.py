"""merr1: hackable training recipes for MER-R1 (slow-fast thinking synergy for multimodal
emotion recognition) on Qwen2.5-Omni Thinker.

Importing ``merr1`` is cheap and never imports torchtune: the library (``merr1.components``,
``merr1.rewards``, ``merr1.score``) is usable without the recipe runner.
"""

__version__ = "0.1.0"
