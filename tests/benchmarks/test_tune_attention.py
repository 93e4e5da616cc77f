"""The attention tuner end to end on the CPU at tiny shapes (Triton interpreted, as conftest sets it up), and how it
picks: the setting with the least worst slowdown, and the largest batch where split-KV wins."""

import argparse
import json
from pathlib import Path

import pytest

from qasr.benchmarks import tune_attention as tune
from qasr.kernels.triton.tuning import ENV_VAR, AttentionTuning

TOP_LEVEL_KEYS = {"benchmark", "date", "git_commit", "device", "versions", "config", "results"}


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    tune.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_tuner_times_every_setting_and_writes_the_standard_json(tmp_path: Path, capsys) -> None:
    default = AttentionTuning()  # each path's default setting is in the grid: the others are timed against it
    decode_tiles, split_tile = (16, default.decode_tile_n), default.split_tile_n
    # one label serves both decode paths' defaults below
    assert default.decode(fp8_cache=True) == default.decode(fp8_cache=False)
    args = parse("--device", "cpu", "--batch-sizes", "3", "--split-batch-sizes", "1", "--contexts", "40", "--heads",
                 "4", "--kv-heads", "2", "--head-dim", "16", "--kv-cache-dtype", "auto", "fp8", "--decode-tile-n",
                 *map(str, decode_tiles), "--num-warps", "4", "--num-stages", "3", "--max-registers", "0", "128",
                 "--fp8-dot-fp16", "0", "1", "--split-tile-n", str(split_tile), "--segments", "4", "16", "--iters", "2",
                 "--warmup", "1",
                 "--mixed-batch-sizes", "2", "--mixed-chunk", "5", "--out-dir", str(tmp_path))
    assert tune.main(args) == 0
    [path] = tmp_path.glob("tune-attention-cpu-*.json")
    document = json.loads(path.read_text())
    assert set(document) == TOP_LEVEL_KEYS and document["benchmark"] == "tune-attention"
    rows = document["results"]
    # per cache, the 2D kernel at both batches (1 for the crossover) under that cache's decode path, split-KV at
    # batch 1 only, a mixed step both ways
    decode_labels = [f"tile {t} warps 4 stages 3{r}" for t in decode_tiles for r in ("", " registers 128")]
    fp8_labels = [label + dots for label in decode_labels for dots in ("", " fp16 dots")]
    assert sorted((r["kv_dtype"], r["path"], r["batch"], r["setting"]) for r in rows) == sorted(
        [(kv, path, b, label) for kv, path, labels in (("float32", "decode", decode_labels),
                                                       ("float8_e4m3fn", "fp8_decode", fp8_labels))
         for b in (1, 3) for label in labels]
        + [(kv, "split", 1, f"tile {split_tile} warps 4 stages 3 segments {n}") for kv in ("float32", "float8_e4m3fn")
           for n in (4, 16)]
        + [(kv, "mixed", 2, label) for kv in ("float32", "float8_e4m3fn")
           for label in ("decodes with the chunk", "decodes apart")])
    for row in rows:
        assert row["error"] is None and row["ms"] > 0 and row["gb_s"] > 0 and row["vs_default"] > 0
    defaults = [r for r in rows if r["setting"] in (f"tile {default.decode_tile_n} warps 4 stages 3",
                                                    f"tile {split_tile} warps 4 stages 3 segments 16",
                                                    "decodes with the chunk")]
    assert len(defaults) == 8 and all(r["vs_default"] == 1.0 for r in defaults)
    recommendation = document["config"]["recommendation"]
    assert set(recommendation) == {"decode", "fp8_decode", "split", "split_wins_up_to", "decode_launch_from",
                                   "decode_launch_min_seqs", "fp8_decode_launch_min_seqs"}
    assert set(recommendation["split_wins_up_to"]) == {"float32 context 40", "float8_e4m3fn context 40"}
    env = document["config"]["env"]
    assert env in capsys.readouterr().out
    if "=" in env:  # the line sets what it names
        AttentionTuning.parse(env.removeprefix(f"{ENV_VAR}=").strip('"'))


def test_each_decode_path_sets_its_own_fields() -> None:
    grid = tune.settings(parse("--decode-tile-n", "128", "--num-warps", "8", "--num-stages", "2",
                               "--max-registers", "128", "--split-tile-n", "64", "--segments", "16"))
    recommendation = {"decode": {"setting": "tile 128 warps 8 stages 2 registers 128"},
                      "fp8_decode": {"setting": "tile 128 warps 8 stages 2 registers 128 fp16 dots"},
                      "split": {"setting": "tile 64 warps 4 stages 3 segments 16"}}
    env = tune.env_line(recommendation, grid)
    assert AttentionTuning.parse(env.removeprefix(f"{ENV_VAR}=").strip('"')) == AttentionTuning(
        decode_tile_n=128, decode_num_warps=8, decode_num_stages=2, decode_max_registers=128,
        fp8_decode_tile_n=128, fp8_decode_num_warps=8, fp8_decode_num_stages=2, fp8_decode_max_registers=128,
        fp8_dot_fp16=1, split_tile_n=64)


def test_a_setting_the_kernels_cannot_take_is_refused_before_any_timing(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="decode_tile_n must be a power of two"):
        tune.main(parse("--device", "cpu", "--decode-tile-n", "24", "--out-dir", str(tmp_path)))
    with pytest.raises(SystemExit, match="segments must be a power of two"):
        tune.main(parse("--device", "cpu", "--segments", "12", "--out-dir", str(tmp_path)))


def row(path: str, batch: int, setting: str, ms: float | None, context: int = 512,
        kv_dtype: str = "bfloat16") -> dict:
    return {"path": path, "kv_dtype": kv_dtype, "batch": batch, "context": context, "setting": setting, "ms": ms}


def test_the_recommendation_is_the_least_worst_setting_and_the_crossover_the_largest_winning_batch() -> None:
    rows = [row("decode", 64, "a", 1.0), row("decode", 64, "b", 1.1),    # a best here, b 10% behind
            row("decode", 256, "a", 3.0), row("decode", 256, "b", 2.0),  # b best here, a 50% behind
            row("decode", 256, "c", None),                               # c failed: never chosen
            row("decode", 4, "a", 9.0), row("decode", 4, "b", 0.1),      # a split-only batch: not the 2D kernel's
            row("decode", 16, "a", 0.5),
            row("split", 4, "s", 0.2), row("split", 16, "s", 0.4), row("split", 16, "t", 0.6)]
    chosen = tune.recommend(rows, decode_batches=[64, 256])
    assert chosen["decode"] == {"setting": "b", "worst_slowdown": pytest.approx(1.1)}
    assert chosen["split"]["setting"] == "s"
    assert chosen["split_wins_up_to"] == {"bfloat16 context 512": 16}
    rows.append(row("split", 32, "s", 5.0))
    rows.append(row("decode", 32, "a", 1.0))
    assert tune.recommend(rows, decode_batches=[64, 256])["split_wins_up_to"] == {"bfloat16 context 512": 16}


def mixed(batch: int, apart_ms: float, together_ms: float, context: int = 512,
          kv_dtype: str = "bfloat16") -> list[dict]:
    return [row("mixed", batch, "decodes apart", apart_ms, context, kv_dtype),
            row("mixed", batch, "decodes with the chunk", together_ms, context, kv_dtype)]


def test_the_decodes_own_launch_starts_where_it_wins_at_every_larger_batch() -> None:
    rows = (mixed(16, 1.2, 1.0) + mixed(64, 0.9, 1.0) + mixed(128, 1.1, 1.0) + mixed(256, 2.0, 3.0)
            + mixed(16, 0.5, 1.0, context=4096) + mixed(256, 0.5, 1.0, context=4096))
    chosen = tune.recommend(rows, decode_batches=[64])
    # at 512 it loses at 128, so only 256 counts; at 4096 it wins from 16 on: the larger start serves both
    assert chosen["decode_launch_from"] == {"bfloat16 context 512": 256, "bfloat16 context 4096": 16}
    assert chosen["decode_launch_min_seqs"] == 256 == AttentionTuning().decode_launch_min_seqs
    assert "defaults are best" in tune.env_line(chosen, [])
    earlier = tune.recommend(mixed(64, 1.2, 1.0) + mixed(128, 0.9, 1.0) + mixed(256, 0.8, 1.0), decode_batches=[64])
    assert earlier["decode_launch_min_seqs"] == 128 and "decode_launch_min_seqs=128" in tune.env_line(earlier, [])
    never = tune.recommend(mixed(64, 2.0, 1.0) + mixed(256, 2.0, 1.0, context=4096), decode_batches=[64])
    assert never["decode_launch_from"] == {"bfloat16 context 512": None, "bfloat16 context 4096": None}
    assert never["decode_launch_min_seqs"] == 0 and "decode_launch_min_seqs=0" in tune.env_line(never, [])
    assert "decode_launch_from" not in tune.recommend([row("decode", 64, "a", 1.0)], decode_batches=[64])


def test_each_kind_of_cache_gets_its_own_decode_launch_threshold() -> None:
    fp8 = "float8_e4m3fn"
    rows = mixed(64, 1.2, 1.0) + mixed(256, 0.9, 1.0)  # bf16: apart from 256; FP8 from 32
    rows += [r for batch in (32, 64, 256) for r in mixed(batch, 0.8, 1.0, kv_dtype=fp8)]
    chosen = tune.recommend(rows, decode_batches=[64])
    assert (chosen["decode_launch_min_seqs"], chosen["fp8_decode_launch_min_seqs"]) == (256, 32)
    assert tune.env_line(chosen, []) == f'{ENV_VAR}="fp8_decode_launch_min_seqs=32"'  # bf16's is the default
    assert "fp8_decode_launch_min_seqs" not in tune.recommend(mixed(64, 1.2, 1.0), decode_batches=[64])
