"""`qasr bench NAME`: each benchmark's module is imported only when it runs."""

import argparse

from qasr.cli import add_commands

BENCHMARKS = {
    "throughput": ("qasr.benchmarks.throughput", "offline throughput: qasr against transformers batched generate "
                                                 "on the same random checkpoint and clips"),
    "align": ("qasr.benchmarks.alignment", "what word timestamps cost: the same clips transcribed alone and "
                                           "transcribed + aligned by the forced aligner, in one run"),
    "step": ("qasr.benchmarks.step", "host time per engine step (schedule, input preparation, update, "
                                     "detokenization) at 64, 256 and 512 running sequences"),
    "kernels": ("qasr.benchmarks.kernels", "attention kernels against SDPA flash and FlexAttention, and bandwidth "
                                           "against the measured copy bandwidth"),
    "tune-attention": ("qasr.benchmarks.tune_attention", "the decoder attention's launch parameters (tile widths, "
                                                         "warps, stages, register caps, for bf16 and FP8 caches "
                                                         "apart; split-KV segments) timed on this GPU; "
                                                         "prints the QASR_ATTENTION_TUNING line"),
    "targets": ("qasr.benchmarks.targets", "the speed targets of a GPU read off a `make gpu-check` run's results: "
                                           "each figure, its target, met or not"),
    "serve": ("qasr.benchmarks.serving", "online serving: many clients at once against an OpenAI-compatible "
                                         "transcription server (qasr, vLLM, sglang-omni)"),
    "abuse": ("qasr.benchmarks.abuse", "fuzz, bursts, hang-ups, slow connections and cheap expensive inputs "
                                       "against a qasr server: no 5xx, no hang, and how it recovers"),
    "baseline-server": ("qasr.benchmarks.baseline_server", "the plain transformers model behind the OpenAI "
                                                          "transcription route, one batch at a time: the reference "
                                                          "for `qasr bench serve --base-url`"),
    "faults": ("qasr.benchmarks.faults", "replicas behind nginx killed and drained under load: no task lost, no "
                                         "request hung, only the dead replica's requests failed"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_commands(parser, BENCHMARKS, "benchmark")
