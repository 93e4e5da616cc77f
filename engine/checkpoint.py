"""Finding a checkpoint, and reading and writing its weights under canonical names.

Canonical names are the original layout's names without the `thinker.` prefix (docs/internals.md):
`audio_tower.*` (projector as `audio_tower.proj1/proj2`), `model.*` (decoder) and `lm_head.weight`. A forced
aligner's classifier is `lm_head.weight` too (`thinker.lm_head.weight` in its original layout, `score.weight` in
its -hf one).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from qasr.engine.model_config import ModelConfig


class CheckpointError(ValueError):
    pass


HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "tokenizer*"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
IGNORED_PREFIXES = ("talker.", "code2wav.")  # Qwen3-Omni parts the original layout may carry
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"



# ---------------------------------------------------------------------------------------------------------
# Finding the checkpoint


def _hub_offline() -> bool:
    # Read at call time: huggingface_hub reads its own constant once, at import.
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:  # the cache first: no network, no waiting
        cached = Path(snapshot_download(repo_id, allow_patterns=HUB_ALLOW_PATTERNS, local_files_only=True))
        if _is_complete(cached):
            return cached
    except Exception:
        pass
    unreachable = (f"{repo_id!r} is neither a local folder nor in the Hugging Face cache, "
                   "and the Hugging Face Hub is unreachable")
    if _hub_offline():
        raise CheckpointError(f"{unreachable} (HF_HUB_OFFLINE is set)")
    timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT", "10"))
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=HUB_ALLOW_PATTERNS, etag_timeout=timeout))
    except Exception as e:
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        if isinstance(e, (RepositoryNotFoundError, GatedRepoError)):
            raise CheckpointError(f"{repo_id!r}: no such model on the Hugging Face Hub, "
                                  f"or no access to it ({type(e).__name__})") from e
        raise CheckpointError(f"{unreachable}: {type(e).__name__}: {e}") from e
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{repo_id!r}: the Hugging Face repository has no config.json")
    return folder


def resolve_model_path(model: str | os.PathLike) -> Path:
    """A local checkpoint folder, or a Hugging Face model id fetched into the local cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: a folder without config.json is not a checkpoint")
        return path
    if path.exists():
        raise CheckpointError(f"{path}: not a folder (a checkpoint is a folder with config.json)")
    if not HUB_ID.match(str(model)):
        raise CheckpointError(f"no such checkpoint folder: {model} (and it is not an 'org/name' model id)")
    return _download(str(model))


# ---------------------------------------------------------------------------------------------------------
# Names and shapes


# (canonical prefix, original-layout prefix, -hf layout prefix), most specific first
NAME_PREFIXES = (
    ("audio_tower.proj1.", "thinker.audio_tower.proj1.", "model.multi_modal_projector.linear_1."),
    ("audio_tower.proj2.", "thinker.audio_tower.proj2.", "model.multi_modal_projector.linear_2."),
    ("audio_tower.", "thinker.audio_tower.", "model.audio_tower."),
    ("model.", "thinker.model.", "model.language_model."),
    ("lm_head.", "thinker.lm_head.", "lm_head."),
)


ALIGNER_HF_HEAD = ("lm_head.", "thinker.lm_head.", "score.")  # transformers' token-classification head


def _prefixes(aligner: bool) -> tuple[tuple[str, str, str], ...]:
    return (*NAME_PREFIXES[:-1], ALIGNER_HF_HEAD) if aligner else NAME_PREFIXES


def _column(layout: str) -> int:
    if layout not in ("original", "hf"):
        raise ValueError(f"unknown checkpoint layout {layout!r}")
    return 1 if layout == "original" else 2


def disk_name(name: str, layout: str, aligner: bool = False) -> str:
    """The name a canonical tensor has on disk in `layout` (of a forced aligner, with `aligner`)."""
    column = _column(layout)
    for row in _prefixes(aligner):
        if name.startswith(row[0]):
            return row[column] + name.removeprefix(row[0])
    raise ValueError(f"not a canonical tensor name: {name}")


def canonical_name(name: str, layout: str, aligner: bool = False) -> str | None:
    """The canonical name of an on-disk tensor, or None when `layout` has no such spelling."""
    column = _column(layout)
    for row in _prefixes(aligner):
        if name.startswith(row[column]):
            canonical = row[0] + name.removeprefix(row[column])
            # e.g. "model.audio_tower.proj1.*" in the -hf layout: a known prefix, but not its spelling there
            return canonical if disk_name(canonical, layout, aligner) == name else None
    return None


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor the model needs, with its shape (lm_head included even when tied)."""
    a, t = config.audio, config.text
    d, c, ffn = a.d_model, a.conv_channels, a.ffn_dim
    freq_bins = a.num_mel_bins
    for _ in range(3):  # three stride-2 convolutions with padding 1
        freq_bins = (freq_bins + 1) // 2
    shapes: dict[str, tuple[int, ...]] = {
        "audio_tower.conv2d1.weight": (c, 1, 3, 3), "audio_tower.conv2d1.bias": (c,),
        "audio_tower.conv2d2.weight": (c, c, 3, 3), "audio_tower.conv2d2.bias": (c,),
        "audio_tower.conv2d3.weight": (c, c, 3, 3), "audio_tower.conv2d3.bias": (c,),
        "audio_tower.conv_out.weight": (d, c * freq_bins),
        "audio_tower.ln_post.weight": (d,), "audio_tower.ln_post.bias": (d,),
        "audio_tower.proj1.weight": (d, d), "audio_tower.proj1.bias": (d,),
        "audio_tower.proj2.weight": (a.output_dim, d), "audio_tower.proj2.bias": (a.output_dim,),
    }
    for i in range(a.num_layers):
        p = f"audio_tower.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}self_attn.{proj}.weight"] = (d, d)
            shapes[f"{p}self_attn.{proj}.bias"] = (d,)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            shapes[f"{p}{norm}.weight"] = (d,)
            shapes[f"{p}{norm}.bias"] = (d,)
        shapes[f"{p}fc1.weight"], shapes[f"{p}fc1.bias"] = (ffn, d), (ffn,)
        shapes[f"{p}fc2.weight"], shapes[f"{p}fc2.bias"] = (d, ffn), (d,)

    h, q, kv, hd = t.hidden_size, t.num_heads * t.head_dim, t.num_kv_heads * t.head_dim, t.head_dim
    shapes["model.embed_tokens.weight"] = (t.vocab_size, h)
    for i in range(t.num_layers):
        p = f"model.layers.{i}."
        shapes[f"{p}input_layernorm.weight"] = (h,)
        shapes[f"{p}post_attention_layernorm.weight"] = (h,)
        shapes[f"{p}self_attn.q_proj.weight"] = (q, h)
        shapes[f"{p}self_attn.k_proj.weight"] = (kv, h)
        shapes[f"{p}self_attn.v_proj.weight"] = (kv, h)
        shapes[f"{p}self_attn.o_proj.weight"] = (h, q)
        shapes[f"{p}self_attn.q_norm.weight"] = (hd,)
        shapes[f"{p}self_attn.k_norm.weight"] = (hd,)
        shapes[f"{p}mlp.gate_proj.weight"] = (t.intermediate_size, h)
        shapes[f"{p}mlp.up_proj.weight"] = (t.intermediate_size, h)
        shapes[f"{p}mlp.down_proj.weight"] = (h, t.intermediate_size)
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (config.head_size, h)
    return shapes


# ---------------------------------------------------------------------------------------------------------
# Reading and writing safetensors


def safetensors_files(path: Path) -> list[Path]:
    index = path / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map") or {}
        files = [path / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{path}: {INDEX_FILE} names shard files that are not there: {missing}")
        if files:
            return files
    if (path / SINGLE_FILE).is_file():
        return [path / SINGLE_FILE]
    shards = sorted(path.glob("model-*-of-*.safetensors"))
    if shards:
        return shards
    raise CheckpointError(f"{path}: no {SINGLE_FILE}, {INDEX_FILE} or model-*-of-*.safetensors files")


def is_tied(config: ModelConfig) -> bool:
    """lm_head is the embedding: a tied speech recognition model (an aligner's head classifies time slots)."""
    return config.text.tie_word_embeddings and config.aligner is None


def _tensor_shapes(files: list[Path]) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """On-disk name -> (file, shape), read from the headers only."""
    found: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                found[name] = (file, tuple(f.get_slice(name).get_shape()))
    return found


def _listing(kind: str, items: list[str], limit: int = 10) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{len(items)} {kind}: {', '.join(items[:limit])}{more}"


def _match_tensors(path: Path, config: ModelConfig) -> tuple[dict[str, str], dict[str, Path]]:
    """Checks the checkpoint against the config's complete set of tensors and shapes.

    Returns canonical -> on-disk name, and on-disk name -> file; lm_head is left out when tied.
    """
    on_disk = _tensor_shapes(safetensors_files(path))
    expected = expected_shapes(config)
    tied = is_tied(config)
    aligner = config.aligner is not None

    wanted: dict[str, str] = {}
    unexpected, wrong_shape = [], []
    for name, (_, shape) in on_disk.items():
        if config.layout == "original" and name.startswith(IGNORED_PREFIXES):
            continue
        canonical = canonical_name(name, config.layout, aligner)
        if canonical not in expected:
            unexpected.append(name)
        elif shape != expected[canonical]:
            wrong_shape.append(f"{name} {list(shape)} (expected {list(expected[canonical])})")
        elif not (tied and canonical == "lm_head.weight"):
            wanted[canonical] = name
    optional = {"lm_head.weight"} if tied else set()
    missing = [disk_name(n, config.layout, aligner) for n in expected if n not in wanted and n not in optional]
    if missing or unexpected or wrong_shape:
        problems = [_listing(kind, sorted(items)) for kind, items in
                    (("missing tensors", missing), ("unexpected tensors", unexpected),
                     ("tensors with the wrong shape", wrong_shape)) if items]
        raise CheckpointError(f"{path}: checkpoint does not match its config.json ({config.layout} layout): "
                              + "; ".join(problems))
    return wanted, {name: file for name, (file, _) in on_disk.items()}


def _read(wanted: dict[str, str], files: dict[str, Path]) -> dict[str, torch.Tensor]:
    """Canonical name -> tensor as stored, one open per file."""
    by_file: dict[Path, list[str]] = {}
    for canonical, name in wanted.items():
        by_file.setdefault(files[name], []).append(canonical)
    tensors = {}
    for file, names in by_file.items():
        with safe_open(file, framework="pt") as f:
            for canonical in names:
                tensors[canonical] = f.get_tensor(wanted[canonical])
    return tensors


def read_tensors(path: Path, config: ModelConfig) -> dict[str, torch.Tensor]:
    """Every tensor under its canonical name, as stored, checked against the config's full set."""
    return _read(*_match_tensors(Path(path), config))


def load_weights(path: Path, config: ModelConfig, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """All weights under canonical names, cast to `dtype`, checked against the config's full set."""
    weights = {name: t.to(dtype) for name, t in read_tensors(path, config).items()}
    if is_tied(config):
        # Like vLLM: a tied checkpoint's lm_head is the embedding, whatever a stored lm_head.weight holds.
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    return weights


def save_safetensors(dst: Path, tensors: dict[str, torch.Tensor], shards: int = 1) -> None:
    """Write `tensors` as model.safetensors, or as `shards` files plus an index, as transformers does."""
    dst.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.contiguous() for name, t in tensors.items()}
    if shards <= 1:
        save_file(tensors, dst / SINGLE_FILE, metadata={"format": "pt"})
        return
    names = list(tensors)
    groups = [{n: tensors[n] for n in names[i * len(names) // shards:(i + 1) * len(names) // shards]}
              for i in range(shards)]
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    weight_map = {}
    for i, group in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file(group, dst / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, file))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (dst / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
