from pathlib import Path

DEMO_MODEL_DIR = Path(__file__).parent / "assets" / "demo-model"


def demo_model_path() -> Path:
    """The small bundled checkpoint used when no model is named."""
    if not (DEMO_MODEL_DIR / "config.json").exists():
        raise FileNotFoundError(
            f"the bundled demo model is not installed at {DEMO_MODEL_DIR}; pass a model "
            "(a local Qwen3-ASR checkpoint folder or a Hugging Face id such as Qwen/Qwen3-ASR-0.6B)")
    return DEMO_MODEL_DIR
