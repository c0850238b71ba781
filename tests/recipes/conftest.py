import pytest
from tune_helpers import tune_run


@pytest.fixture(scope="session")
def tiny_sft_checkpoint(tmp_path_factory):
    """HF weights of a short tiny SFT run (~100 steps): answers are mostly well-formed, so GRPO
    tests see non-trivial rewards, advantages and gradients."""
    out = tmp_path_factory.mktemp("tiny_sft")
    tune_run(
        "sft_distributed",
        "debug/sft_tiny",
        [f"output_dir={out}", "epochs=6", "lr_scheduler.num_warmup_steps=5", "save_every_n_steps=null"],
    )
    return out / "hf"
