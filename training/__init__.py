"""Training qasr's bundled demo model: a small Qwen3-ASR-format checkpoint trained on espeak-ng speech."""
