from pathlib import Path

DEMO_MODEL_DIR = Path(__file__).parent / "assets" / "demo-model"
DEMO_ALIGNER_DIR = Path(__file__).parent / "assets" / "demo-aligner"


def demo_model_path() -> Path:
    """The small bundled checkpoint used when no model is named."""
    if not (DEMO_MODEL_DIR / "config.json").exists():
        raise FileNotFoundError(
            f"the bundled demo model is not installed at {DEMO_MODEL_DIR}; pass a model "
            "(a local Qwen3-ASR checkpoint folder or a Hugging Face id such as Qwen/Qwen3-ASR-0.6B)")
    return DEMO_MODEL_DIR


def demo_aligner_path() -> Path | None:
    """The small bundled forced aligner that times the demo model's words; None where it is not installed."""
    return DEMO_ALIGNER_DIR if (DEMO_ALIGNER_DIR / "config.json").exists() else None
