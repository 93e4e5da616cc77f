"""Finding checkpoints, parsing configs and loading weights in both layouts; original -> -hf conversion."""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from qasr.engine.checkpoint import CheckpointError, expected_shapes, load_weights, resolve_model_path
from qasr.engine.hf_conversion import convert_to_hf
from qasr.engine.model_config import ModelConfig, load_model_config, parse_config

QWEN_SPECIAL_IDS = {151643, 151644, 151645, 151669, 151670, 151676, 151704}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoint-tests")


@pytest.fixture(scope="module")
def pair(shape, root: Path, write_checkpoint) -> dict[str, Path]:
    """The same random model in both layouts."""
    return {layout: write_checkpoint(root / f"{shape.name}-{layout}", shape, layout=layout, seed=3)
            for layout in ("hf", "original")}


@pytest.fixture(scope="module")
def small(root: Path, shapes, write_checkpoint) -> dict[str, Path]:
    """The first shape in both layouts, for tests that break or convert a checkpoint."""
    return {layout: write_checkpoint(root / f"small-{layout}", shapes[0], layout=layout, seed=1)
            for layout in ("hf", "original")}


def load(path: Path, dtype: torch.dtype = torch.float32) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    config = load_model_config(path)
    return config, load_weights(path, config, dtype)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


# --- both layouts --------------------------------------------------------------------------------------


def test_layouts_give_identical_config_and_weights(pair: dict[str, Path], shape):
    hf_config, hf_weights = load(pair["hf"])
    original_config, original_weights = load(pair["original"])
    assert (hf_config.layout, original_config.layout) == ("hf", "original")
    for config in (hf_config, original_config):
        assert config.audio.d_model == shape.enc_d_model and config.audio.num_layers == shape.enc_layers
        assert config.audio.num_heads == shape.enc_heads and config.audio.conv_channels == shape.conv_channels
        assert config.audio.output_dim == shape.hidden and config.audio.activation == "gelu"
        assert (config.audio.n_window, config.audio.n_window_infer) == (50, 800)
        assert config.audio.num_mel_bins == 128
        assert (config.text.num_heads, config.text.num_kv_heads) == (shape.heads, shape.kv_heads)
        assert config.text.head_dim == shape.head_dim and config.text.num_layers == shape.layers
        assert config.text.rope_theta == 1e6 and config.text.tie_word_embeddings
        assert config.dtype == "float32"
    assert hf_config.audio == original_config.audio and hf_config.text == original_config.text
    assert hf_config.audio_token_id == original_config.audio_token_id
    assert hf_config.eos_token_ids == original_config.eos_token_ids

    assert hf_weights.keys() == expected_shapes(hf_config).keys()
    assert_same_weights(hf_weights, original_weights)
    for weights in (hf_weights, original_weights):
        assert weights["lm_head.weight"] is weights["model.embed_tokens.weight"]
    for name, expected in expected_shapes(hf_config).items():
        assert tuple(hf_weights[name].shape) == expected, name


@pytest.mark.parametrize("layout", ["hf", "original"])
def test_sharded_equals_single_file(small: dict[str, Path], root: Path, layout: str, shapes, write_checkpoint):
    sharded = write_checkpoint(root / f"sharded-{layout}", shapes[0], layout=layout, seed=1, shards=3)
    assert not (sharded / "model.safetensors").exists()
    assert len(list(sharded.glob("model-*-of-00003.safetensors"))) == 3
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3
    assert_same_weights(load(sharded)[1], load(small[layout])[1])


def test_dtype_cast(small: dict[str, Path], root: Path, shapes, write_checkpoint):
    config, weights32 = load(small["hf"])
    weights16 = load_weights(small["hf"], config, torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 for t in weights16.values())
    assert_same_weights(weights16, {name: t.to(torch.bfloat16) for name, t in weights32.items()})

    stored16 = write_checkpoint(root / "bf16-original", shapes[0], layout="original", seed=1,
                                dtype=torch.bfloat16)
    config16, from_bf16 = load(stored16)
    assert config16.dtype == "bfloat16"
    assert_same_weights(from_bf16, {name: t.to(torch.bfloat16).float() for name, t in weights32.items()})


def test_special_ids_and_eos_come_from_the_checkpoint(small: dict[str, Path]):
    from transformers import AutoTokenizer

    for path in small.values():
        config = load_model_config(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        vocab = tokenizer.get_vocab()
        ours = {vocab[t] for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_start|>",
                                   "<|audio_end|>", "<|audio_pad|>", "<asr_text>")}
        assert not ours & QWEN_SPECIAL_IDS  # a test tokenizer that shares nothing with Qwen's ids
        assert config.audio_token_id == vocab["<|audio_pad|>"]
        assert set(config.eos_token_ids) == {vocab["<|endoftext|>"], vocab["<|im_end|>"]}
        assert tokenizer.audio_token == "<|audio_pad|>" and tokenizer.eos_token == "<|im_end|>"
        assert tokenizer.decode([vocab["<asr_text>"]], skip_special_tokens=True) == "<asr_text>"


def test_eos_fallbacks(small: dict[str, Path], tmp_path: Path):
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(small["original"]).get_vocab()
    folder = tmp_path / "eos"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(small["original"] / name, folder / name)
    # no generation_config.json: the config's eos (text_config.eos_token_id in the original layout)
    assert load_model_config(folder).eos_token_ids == (vocab["<|im_end|>"],)
    raw = json.loads((folder / "config.json").read_text())
    raw["thinker_config"]["text_config"].pop("eos_token_id")
    (folder / "config.json").write_text(json.dumps(raw))
    # nothing in the configs: the tokenizer's eos token
    assert load_model_config(folder).eos_token_ids == (vocab["<|im_end|>"],)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 7}))
    assert load_model_config(folder).eos_token_ids == (7,)


# --- config parsing ------------------------------------------------------------------------------------

AUDIO = {"num_mel_bins": 128, "d_model": 64, "encoder_layers": 3, "encoder_attention_heads": 4,
         "encoder_ffn_dim": 256, "downsample_hidden_size": 16, "output_dim": 96, "n_window": 50,
         "n_window_infer": 800, "activation_function": "gelu"}
TEXT = {"vocab_size": 1000, "hidden_size": 96, "intermediate_size": 192, "num_hidden_layers": 2,
        "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 24, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 4096, "tie_word_embeddings": True}


def original_raw(**text_overrides) -> dict:
    text = {**TEXT, "rope_theta": 1000000, "eos_token_id": 5, **text_overrides,
            "rope_scaling": {"interleaved": True, "mrope_interleaved": True, "mrope_section": [6, 3, 3],
                             "rope_type": "default", "type": "default"}}
    return {"model_type": "qwen3_asr", "thinker_config": {
        "audio_config": dict(AUDIO), "text_config": text, "audio_token_id": 999, "dtype": "bfloat16"}}


def hf_raw() -> dict:
    audio = {k: v for k, v in AUDIO.items() if k != "encoder_attention_heads"} | {"num_attention_heads": 4}
    text = TEXT | {"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}
    return {"model_type": "qwen3_asr", "audio_config": audio, "text_config": text, "audio_token_id": 998,
            "eos_token_id": [11, 12], "dtype": "float32"}


def test_parse_original_spelling(tmp_path: Path):
    config = parse_config(original_raw(), tmp_path)
    assert config.layout == "original" and config.audio_token_id == 999 and config.dtype == "bfloat16"
    assert config.audio.num_heads == 4 and config.audio.d_model == 64 and config.audio.conv_channels == 16
    assert config.text.rope_theta == 1e6 and config.text.num_kv_heads == 2 and config.text.head_dim == 24
    assert config.eos_token_ids == (5,)


def test_parse_hf_spelling(tmp_path: Path):
    config = parse_config(hf_raw(), tmp_path)
    assert config.layout == "hf" and config.audio_token_id == 998 and config.dtype == "float32"
    assert config.audio.num_heads == 4 and config.text.rope_theta == 5e5
    assert config.eos_token_ids == (11, 12)
    raw = hf_raw()  # other spellings: hidden_size for d_model, no head_dim, rope_theta beside rope_parameters
    raw["audio_config"]["hidden_size"] = raw["audio_config"].pop("d_model")
    raw["text_config"].pop("head_dim")
    raw["text_config"]["rope_theta"] = raw["text_config"].pop("rope_parameters")["rope_theta"]
    config = parse_config(raw, tmp_path)
    assert config.audio.d_model == 64 and config.text.head_dim == 96 // 6 and config.text.rope_theta == 5e5


def test_tie_word_embeddings_rules(tmp_path: Path):
    raw = original_raw(tie_word_embeddings=False)
    assert not parse_config(raw, tmp_path).text.tie_word_embeddings
    raw["thinker_config"]["text_config"].pop("tie_word_embeddings")
    assert parse_config(raw, tmp_path).text.tie_word_embeddings  # default
    raw = hf_raw()
    raw["text_config"]["tie_word_embeddings"] = False  # transformers ties by the top-level flag
    raw["tie_word_embeddings"] = True
    assert parse_config(raw, tmp_path).text.tie_word_embeddings
    raw["tie_word_embeddings"] = False
    assert not parse_config(raw, tmp_path).text.tie_word_embeddings


def test_parse_errors(tmp_path: Path):
    with pytest.raises(ValueError, match="thinker_config"):
        parse_config({"d_model": 3}, tmp_path)
    with pytest.raises(ValueError, match="'qwen2_audio' is not a Qwen3-ASR model"):
        parse_config(hf_raw() | {"model_type": "qwen2_audio"}, tmp_path)
    raw = hf_raw()
    raw["audio_config"].pop("n_window")
    with pytest.raises(ValueError, match="n_window"):
        parse_config(raw, tmp_path)
    raw = original_raw()
    raw["thinker_config"]["text_config"].pop("num_attention_heads")
    with pytest.raises(ValueError, match="thinker_config.text_config.*num_attention_heads"):
        parse_config(raw, tmp_path)
    raw = original_raw()
    raw["thinker_config"]["text_config"].pop("rope_theta")
    with pytest.raises(ValueError, match="rope_theta"):
        parse_config(raw, tmp_path)
    raw = original_raw()
    del raw["thinker_config"]["audio_config"]
    with pytest.raises(ValueError, match="audio_config"):
        parse_config(raw, tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        load_model_config(tmp_path)
    with pytest.raises(ValueError, match="no config.json"):
        load_model_config(tmp_path / "nowhere")


# --- broken checkpoints --------------------------------------------------------------------------------


def broken_copy(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def load_error(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load(path)
    return str(info.value)


@pytest.mark.parametrize("layout", ["hf", "original"])
def test_missing_tensor(small: dict[str, Path], tmp_path: Path, layout: str):
    name = {"hf": "model.language_model.layers.1.mlp.up_proj.weight",
            "original": "thinker.model.layers.1.mlp.up_proj.weight"}[layout]
    message = load_error(broken_copy(small[layout], tmp_path / "ckpt", lambda t: t.pop(name)))
    assert "1 missing tensors" in message and name in message


@pytest.mark.parametrize(("layout", "right", "wrong"), [
    ("hf", "model.multi_modal_projector.linear_1.weight", "model.audio_tower.proj1.weight"),
    ("original", "thinker.model.norm.weight", "model.norm.weight"),
])
def test_misnamed_tensor(small: dict[str, Path], tmp_path: Path, layout: str, right: str, wrong: str):
    def rename(tensors):
        tensors[wrong] = tensors.pop(right)

    message = load_error(broken_copy(small[layout], tmp_path / "ckpt", rename))
    assert f"1 unexpected tensors: {wrong}" in message
    assert f"1 missing tensors: {right}" in message


def test_wrong_shape(small: dict[str, Path], tmp_path: Path):
    name = "thinker.audio_tower.layers.0.fc1.weight"

    def reshape(tensors):
        tensors[name] = tensors[name][:-1].clone()

    message = load_error(broken_copy(small["original"], tmp_path / "ckpt", reshape))
    assert "wrong shape" in message and name in message and "expected" in message


def test_many_problems_are_counted(small: dict[str, Path], tmp_path: Path):
    def drop_encoder(tensors):
        for name in [n for n in tensors if n.startswith("thinker.audio_tower.layers.")]:
            tensors.pop(name)

    message = load_error(broken_copy(small["original"], tmp_path / "ckpt", drop_encoder))
    count = 2 * 16  # two encoder layers of 16 tensors each
    assert f"{count} missing tensors" in message and f"and {count - 10} more" in message


def test_original_extras_and_untied_lm_head(small: dict[str, Path], tmp_path: Path):
    def edit(tensors):
        tensors["talker.model.norm.weight"] = torch.ones(4)  # Qwen3-Omni leftovers are ignored
        tensors["thinker.lm_head.weight"] = torch.zeros_like(tensors["thinker.lm_head.weight"])

    config, weights = load(broken_copy(small["original"], tmp_path / "ckpt", edit))
    # tied: lm_head is the embedding even when the stored lm_head differs (as vLLM does)
    assert weights["lm_head.weight"] is weights["model.embed_tokens.weight"]
    assert not any(name.startswith("talker.") for name in weights)


def test_no_safetensors_and_no_config(small: dict[str, Path], tmp_path: Path):
    folder = tmp_path / "no-weights"
    shutil.copytree(small["hf"], folder, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load(folder)
    assert resolve_model_path(folder) == folder
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="without config.json"):
        resolve_model_path(folder)


def test_resolve_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        resolve_model_path(tmp_path / "missing" / "deeper" / "model")
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        resolve_model_path("./relative/missing")
    file = tmp_path / "weights.bin"
    file.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a folder"):
        resolve_model_path(file)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # so "org/name" is not a local folder
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="neither a local folder nor in the Hugging Face cache"):
        resolve_model_path("qasr-tests/no-such-model-anywhere")
    assert time.monotonic() - start < 5


def test_resolve_from_the_hub_cache(small: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--qasr-tests--cached"
    shutil.copytree(small["hf"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("qasr-tests/cached") == repo / "snapshots" / commit


# --- conversion ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(small: dict[str, Path], root: Path) -> Path:
    out = root / "converted-hf"
    convert_to_hf(small["original"], out)
    return out


def test_convert_to_hf_loads_in_transformers(converted: Path, small: dict[str, Path], shapes):
    from transformers import Qwen3ASRForConditionalGeneration, Qwen3ASRProcessor

    ours = Qwen3ASRForConditionalGeneration.from_pretrained(converted).eval()
    reference = Qwen3ASRForConditionalGeneration.from_pretrained(small["hf"]).eval()
    assert ours.config.audio_config.num_attention_heads == shapes[0].enc_heads
    assert ours.config.text_config.rope_parameters["rope_theta"] == 1e6
    ours_state, reference_state = ours.state_dict(), reference.state_dict()
    assert ours_state.keys() == reference_state.keys()
    for name in reference_state:
        assert torch.equal(ours_state[name], reference_state[name]), name
    assert ours.generation_config.eos_token_id == reference.generation_config.eos_token_id

    processor = Qwen3ASRProcessor.from_pretrained(converted)
    clip = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    inputs = processor.apply_transcription_request(clip, language="English", prompt="Paris")
    audio = "<|audio_start|>" + "<|audio_pad|>" * 13 + "<|audio_end|>"
    assert processor.tokenizer.decode(inputs["input_ids"][0]) == (
        f"<|im_start|>system\nParis<|im_end|>\n<|im_start|>user\n{audio}<|im_end|>\n"
        "<|im_start|>assistant\nlanguage English<asr_text>")
    with torch.inference_mode():
        tokens = [m.generate(**inputs, max_new_tokens=8, do_sample=False)[0].tolist()
                  for m in (ours, reference)]
    assert tokens[0] == tokens[1]


def test_convert_to_hf_matches_hf_layout(converted: Path, small: dict[str, Path]):
    converted_config, converted_weights = load(converted)
    hf_config, hf_weights = load(small["hf"])
    assert converted_config.layout == "hf"
    assert (converted_config.audio, converted_config.text) == (hf_config.audio, hf_config.text)
    assert converted_config.audio_token_id == hf_config.audio_token_id
    assert converted_config.eos_token_ids == hf_config.eos_token_ids
    assert_same_weights(converted_weights, hf_weights)
    with pytest.raises(CheckpointError, match="already"):
        convert_to_hf(small["hf"], converted.parent / "twice")


def test_hf_layout_prompt(small: dict[str, Path]):
    from transformers import Qwen3ASRProcessor

    processor = Qwen3ASRProcessor.from_pretrained(small["hf"])
    prompts = processor.apply_transcription_request(np.zeros(16000, np.float32), tokenize=False)
    assert prompts == ["<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|audio_start|><|audio_pad|>"
                       "<|audio_end|><|im_end|>\n<|im_start|>assistant\n"]
