"""`qasr bench NAME`: each benchmark's module is imported only when it runs."""

import argparse

from qasr.cli import add_commands

BENCHMARKS = {
    "throughput": ("qasr.benchmarks.throughput", "offline throughput: qasr against transformers batched generate "
                                                 "on the same random checkpoint and clips"),
    "kernels": ("qasr.benchmarks.kernels", "attention kernels against SDPA flash and FlexAttention, and bandwidth "
                                           "against the measured copy bandwidth"),
    "serve": ("qasr.benchmarks.serving", "online serving: many clients at once against an OpenAI-compatible "
                                         "transcription server (qasr, vLLM, sglang-omni)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_commands(parser, BENCHMARKS, "benchmark")
