"""Shared test setup: the environment the kernels must see before they are imported, small random Qwen3-ASR
checkpoints (and forced aligners) on disk, speech-like clips, and the `gpu` marker.

There is no helper module to import: what tests share reaches them as fixtures (`speech_like`, `write_checkpoint`,
`write_aligner_checkpoint`, `build_tokenizer`, `shapes`, `shape`, `checkpoint_root`) or through the hooks below.
The checkpoints are deterministic from (shape, seed); their dimensions, configs and preprocessor are the demo
model's (training.model, training.export).
"""

import os

# Triton kernels must see the interpreter switch before they are imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from qasr.engine.checkpoint import canonical_name, disk_name, save_safetensors  # noqa: E402
from qasr.engine.hf_conversion import ASR_CHAT_TEMPLATE, ORIGINAL_CHAT_TEMPLATE, add_special_token  # noqa: E402
from qasr.engine.host_memory import release_freed_memory  # noqa: E402
from qasr.engine.model_config import TIMESTAMP_TOKEN  # noqa: E402
from qasr.kernels.triton.utils import interpreting  # noqa: E402
from training.export import PREPROCESSOR, original_config  # noqa: E402
from training.model import N_WINDOW, Dims, audio_config, text_config  # noqa: E402
from training.tokenizer import ASR_TEXT_TOKEN, SPECIAL_TOKENS  # noqa: E402
from training.tokenizer import build_tokenizer as build_bpe_tokenizer  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


# ---------------------------------------------------------------------------------------------------------
# The Triton interpreter, without its most repeated work


def skip_repatching_in_device_calls() -> None:
    """Triton's interpreter (3.9) patches the language modules a @triton.jit helper's module sees each time a kernel
    calls the helper (tl.sum and tl.cdiv are such helpers): some 2 ms a call, a third of an interpreted engine step.
    The patches are the same every time, and Triton never undoes a helper call's, so within a launch each module needs
    them once: the launch's own and then the first helper call's seeing another module. Outside a launch Triton's own
    call runs."""
    from triton.runtime import interpreter

    if not all(hasattr(interpreter, name) for name in ("GridExecutor", "InterpretedFunction", "InterpreterError")):
        return  # another Triton: its own calls, however long they take
    launch, helper_call = interpreter.GridExecutor.__call__, interpreter.InterpretedFunction.__call__
    patched: list[set[int]] = []  # per launch in progress: the language modules patched so far

    def languages(fn: Callable[..., Any]) -> set[int]:
        return {id(value) for value in fn.__globals__.values()
                if value is interpreter.tl or value is interpreter.tl.core}

    def launch_noting_its_patches(self: Any, *args: Any, **kwargs: Any) -> Any:
        patched.append(languages(self.fn))
        try:
            return launch(self, *args, **kwargs)
        finally:
            patched.pop()

    def call_patching_once_per_launch(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not patched:
            return helper_call(self, *args, **kwargs)
        needed = languages(self.fn)
        if not needed <= patched[-1]:
            patched[-1] |= needed
            return helper_call(self, *args, **kwargs)
        try:
            return self.rewrite()(*args, **kwargs)
        except Exception as e:
            raise interpreter.InterpreterError(repr(e)) from e

    interpreter.GridExecutor.__call__ = launch_noting_its_patches
    interpreter.InterpretedFunction.__call__ = call_patching_once_per_launch


if interpreting():
    skip_repatching_in_device_calls()


# ---------------------------------------------------------------------------------------------------------
# The gpu marker


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests run the compiled kernels: they need CUDA and TRITON_INTERPRET=0 (set to 1 above by default)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
    elif interpreting():
        skip = pytest.mark.skip(reason="runs compiled kernels on the GPU: set TRITON_INTERPRET=0")
    else:
        return
    for item in gpu_items:
        item.add_marker(skip)


# ---------------------------------------------------------------------------------------------------------
# Speech-like clips


def speech_like(seconds: float, seed: int, sample_rate: int = 16000) -> np.ndarray:
    """Noise shaped by a syllable-rate envelope plus a wandering voiced tone: varied, speech-like input."""
    rng = np.random.default_rng(seed)
    n = max(1, int(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * t + rng.uniform(0, 6))
    pitch = rng.uniform(90, 220) * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
    voiced = np.sin(2 * np.pi * np.cumsum(pitch) / sample_rate)
    return (0.3 * envelope * (voiced + 0.5 * rng.standard_normal(n))).astype(np.float32)


@pytest.fixture(name="speech_like", scope="session")
def fixture_speech_like():
    """`speech_like(seconds, seed, sample_rate=16000)`: a float32 clip, the same for the same arguments."""
    return speech_like


# ---------------------------------------------------------------------------------------------------------
# Random checkpoints


@dataclass(frozen=True)
class Shape(Dims):
    """The demo model's dimensions (training.model.Dims) with a name for test ids and checkpoint folders."""

    name: str


SHAPES: list[Shape] = [
    Shape(name="gqa2", enc_d_model=32, enc_layers=2, enc_heads=2, enc_ffn=64, conv_channels=8,
          hidden=32, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=64),
    Shape(name="gqa3", enc_d_model=48, enc_layers=2, enc_heads=4, enc_ffn=96, conv_channels=8,
          hidden=48, layers=2, heads=6, kv_heads=2, head_dim=24, intermediate=96),
    Shape(name="mha", enc_d_model=64, enc_layers=2, enc_heads=4, enc_ffn=128, conv_channels=16,
          hidden=64, layers=2, heads=2, kv_heads=2, head_dim=32, intermediate=128),
]

BPE_VOCAB_SIZE = 600  # 256 byte symbols + merges; the added tokens come after

CORPUS = """\
Set a timer for ten minutes and remind me to check the oven.
What is the weather like in Paris, London, Berlin and Tokyo today?
Turn off the lights in the kitchen and the living room, please.
Play some quiet music in the bedroom at half volume.
Add milk, eggs, bread, butter, apples and coffee to my shopping list.
Wake me up at seven thirty tomorrow morning with a gentle alarm.
How long does it take to drive from the station to the airport?
The quick brown fox jumps over the lazy dog near the river bank.
Today we release a new model for speech recognition in thirty languages.
Please read the last message from my sister again, a little slower.
It will be sunny in the afternoon with a light wind from the north.
Cancel the meeting on Friday and move the call with the team to Monday.
Open the window, close the door, and set the heating to twenty degrees.
My favourite songs are old jazz records and piano music from the sixties.
Remind me every evening at nine to water the plants on the balcony.
Language English, language Chinese, language German, language French.
Numbers: one two three four five six seven eight nine ten eleven twelve.
Hello, how are you? I am fine, thank you. What time is it now?
The report says the river will rise by two metres before the weekend.
Call mum, text dad, and send an email to the landlord about the rent.
system user assistant: language English, language None.
"""

# the original layout's config.json lists these (the demo model's lists English only)
SUPPORT_LANGUAGES = [
    "Chinese", "English", "Cantonese", "Arabic", "German", "French", "Spanish", "Portuguese", "Indonesian",
    "Italian", "Korean", "Russian", "Thai", "Vietnamese", "Japanese", "Turkish", "Hindi", "Malay", "Dutch",
    "Swedish", "Danish", "Finnish", "Polish", "Czech", "Filipino", "Persian", "Greek", "Romanian",
    "Hungarian", "Macedonian",
]

# Found by experiment (greedy decoding of noise and speech-like clips, 0.3 s to 23 s, three shapes, 8 seeds).
# Random tied-embedding models fall into repeating the last token: its own embedding, carried by the
# residual stream, scores highest under the tied lm_head. A small embedding std with a larger final-norm gain
# keeps the logit scale and shrinks that self-bonus; q/k-norm gains near 3 make attention sharp enough for
# the audio to matter; smaller special-token rows make eos (and the other specials) rare but possible.
EMBED_STD = 0.1
LINEAR_GAIN = 1.4  # linear and conv weights: std LINEAR_GAIN / sqrt(fan_in)
QK_NORM_GAIN = 3.0
FINAL_NORM_GAIN = 2.5
SPECIAL_ROW_SCALE = 0.7


def build_tokenizer(dst: Path) -> None:
    """A small byte-level BPE with Qwen's special tokens at non-Qwen ids (the demo model's tokenizer builder)."""
    build_bpe_tokenizer(dst, CORPUS.splitlines() * 3, BPE_VOCAB_SIZE)


def token_ids(dst: Path) -> dict[str, int]:
    tokenizer = Tokenizer.from_file(str(dst / "tokenizer.json"))
    return {t: tokenizer.token_to_id(t) for t in [*SPECIAL_TOKENS, ASR_TEXT_TOKEN]} | {
        "vocab_size": tokenizer.get_vocab_size()}


def padded_vocab_size(tokenizer_size: int) -> int:
    return (tokenizer_size + 63) // 64 * 64  # a few unused rows, as real checkpoints have


def init_weights(model: torch.nn.Module, seed: int, special_ids: list[int]) -> None:
    """Deterministic weights that keep activations O(1) and make greedy outputs vary with the audio."""
    generator = torch.Generator().manual_seed(seed)

    def normal(shape, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=generator) * std + mean

    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                value = normal(param.shape, 0.1 * QK_NORM_GAIN, mean=QK_NORM_GAIN)
            elif name == "model.language_model.norm.weight":
                value = normal(param.shape, 0.1 * FINAL_NORM_GAIN, mean=FINAL_NORM_GAIN)
            elif param.dim() == 1 and "norm" in name and name.endswith("weight"):
                value = normal(param.shape, 0.1, mean=1.0)
            elif param.dim() == 1:  # biases
                value = normal(param.shape, 0.05)
            elif "embed_tokens" in name:
                value = normal(param.shape, EMBED_STD)
                value[special_ids] *= SPECIAL_ROW_SCALE
            else:
                fan_in = math.prod(param.shape[1:])
                value = normal(param.shape, LINEAR_GAIN / math.sqrt(fan_in))
            param.copy_(value)


def build_model(shape: Dims, ids: dict[str, int], seed: int, activation: str = "gelu"):
    """transformers' model at `shape` with the demo model's config (training.model), random weights from `seed`."""
    from transformers import Qwen3ASRConfig, Qwen3ASRForConditionalGeneration

    config = Qwen3ASRConfig(
        audio_config=audio_config(shape) | {"activation_function": activation},
        text_config=text_config(shape, padded_vocab_size(ids["vocab_size"])),
        audio_token_id=ids["<|audio_pad|>"],
        eos_token_id=[ids["<|endoftext|>"], ids["<|im_end|>"]],
        pad_token_id=ids["<|im_end|>"],
        tie_word_embeddings=True,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen3ASRForConditionalGeneration(config)
    init_weights(model, seed, [ids[t] for t in [*SPECIAL_TOKENS, ASR_TEXT_TOKEN]])
    model.tie_weights()
    return model.eval()


def write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def write_checkpoint(dst: Path, shape: Dims, layout: str = "hf", seed: int = 0, shards: int = 1,
                     dtype: torch.dtype = torch.float32, activation: str = "gelu") -> Path:
    """A random Qwen3-ASR checkpoint folder in `layout` ("hf" or "original"); same seed, same weights.

    `activation` is the audio encoder's activation_function (its layers' fc1 and the projector).
    """
    from transformers import GenerationConfig, Qwen3ASRFeatureExtractor

    if layout not in ("hf", "original"):
        raise ValueError(f"layout must be 'hf' or 'original', not {layout!r}")
    dst = Path(dst)
    build_tokenizer(dst)
    ids = token_ids(dst)
    model = build_model(shape, ids, seed, activation)
    state = {name: t.detach().to(dtype) for name, t in model.state_dict().items()}
    eos = [ids["<|endoftext|>"], ids["<|im_end|>"]]

    if layout == "hf":
        state.pop("lm_head.weight")  # tied: save_pretrained leaves it out too
        save_safetensors(dst, state, shards)
        model.config.save_pretrained(dst)
        GenerationConfig(eos_token_id=eos, pad_token_id=ids["<|im_end|>"], do_sample=False,
                         max_new_tokens=512).save_pretrained(dst)
        Qwen3ASRFeatureExtractor(n_window=N_WINDOW).save_pretrained(dst)
        (dst / "chat_template.jinja").write_text(ASR_CHAT_TEMPLATE)
        return dst

    tensors = {disk_name(canonical_name(name, "hf"), "original"): t for name, t in state.items()}
    tensors["thinker.lm_head.weight"] = state["lm_head.weight"].clone()  # stored, and equal to the embedding
    save_safetensors(dst, tensors, shards)
    config = original_config(model, ids, str(dtype).removeprefix("torch."))
    config["thinker_config"]["audio_config"]["activation_function"] = activation  # original_config writes gelu
    write_json(dst / "config.json", {**config, "support_languages": SUPPORT_LANGUAGES})
    write_json(dst / "generation_config.json", {
        "eos_token_id": eos, "pad_token_id": ids["<|endoftext|>"], "do_sample": False,
        "transformers_version": "4.57.6"})
    write_json(dst / "preprocessor_config.json", PREPROCESSOR)
    write_json(dst / "chat_template.json", {"chat_template": ORIGINAL_CHAT_TEMPLATE})
    # vocab.json + merges.txt beside tokenizer.json, as the original repositories ship them
    Tokenizer.from_file(str(dst / "tokenizer.json")).model.save(str(dst))
    return dst


# transformers' converter gives the -hf aligner this template: the audio, then each word and two <timestamp>s
ALIGNER_CHAT_TEMPLATE = (
    "{%- set ns = namespace(audio_tokens='', words=[]) -%}"
    "{%- for m in messages -%}{%- if m.content is not string -%}{%- for c in m.content -%}"
    "{%- if c.type == 'audio' or ('audio' in c) or ('audio_url' in c) -%}"
    "{%- set ns.audio_tokens = ns.audio_tokens + '<|audio_start|><|audio_pad|><|audio_end|>' -%}{%- endif -%}"
    "{%- if c.type == 'text' and (c.text is defined) -%}{%- set ns.words = ns.words + [c.text] -%}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{%- endfor -%}"
    "{{- ns.audio_tokens + ns.words | join('<timestamp><timestamp>') + '<timestamp><timestamp>' -}}"
)
ALIGNER_CLASSES = 96  # 7.7 s of 80 ms slots: random weights pick any of them
ALIGNER_SEGMENT_MS = 60.0  # not transformers' default of 80, so that reading it is tested


def write_aligner_checkpoint(dst: Path, shape: Dims, layout: str = "hf", seed: int = 0) -> Path:
    """A random Qwen3-ForcedAligner checkpoint folder in `layout` ("hf" or "original"); same seed, same weights.
    Its -hf folder loads in transformers as Qwen3ASRForTokenClassification and Qwen3ASRProcessor."""
    from transformers import (
        AutoTokenizer,
        Qwen3ASRConfig,
        Qwen3ASRFeatureExtractor,
        Qwen3ASRForTokenClassification,
        Qwen3ASRProcessor,
    )

    dst = Path(dst)
    build_tokenizer(dst)
    timestamp_id = add_special_token(dst, TIMESTAMP_TOKEN)
    ids = token_ids(dst)
    vocab_size = padded_vocab_size(ids["vocab_size"] + 1)
    config = Qwen3ASRConfig(
        audio_config=audio_config(shape), text_config=text_config(shape, vocab_size) | {"tie_word_embeddings": False},
        audio_token_id=ids["<|audio_pad|>"], timestamp_token_id=timestamp_id, num_labels=ALIGNER_CLASSES,
        tie_word_embeddings=False, dtype="float32")
    config.architectures = ["Qwen3ASRForTokenClassification"]
    torch.manual_seed(seed)
    model = Qwen3ASRForTokenClassification(config)
    init_weights(model, seed, [ids[t] for t in [*SPECIAL_TOKENS, ASR_TEXT_TOKEN]] + [timestamp_id])
    state = {name: t.detach().contiguous() for name, t in model.state_dict().items()}

    if layout == "hf":
        save_safetensors(dst, state)
        config.save_pretrained(dst)
        processor = Qwen3ASRProcessor(feature_extractor=Qwen3ASRFeatureExtractor(n_window=N_WINDOW),
                                      tokenizer=AutoTokenizer.from_pretrained(str(dst)),
                                      chat_template=ALIGNER_CHAT_TEMPLATE, timestamp_segment_time=ALIGNER_SEGMENT_MS)
        processor.save_pretrained(str(dst))
        return dst
    if layout != "original":
        raise ValueError(f"layout must be 'hf' or 'original', not {layout!r}")
    tensors = {disk_name(canonical_name(name, "hf", aligner=True), "original", aligner=True): t
               for name, t in state.items()}
    save_safetensors(dst, tensors)
    raw = original_config(model, ids, "float32")
    thinker = raw["thinker_config"]
    thinker["text_config"]["tie_word_embeddings"] = False
    thinker.update({"model_type": "qwen3_forced_aligner", "classify_num": ALIGNER_CLASSES,
                    "timestamp_token_id": timestamp_id, "timestamp_segment_time": ALIGNER_SEGMENT_MS})
    raw["architectures"] = ["Qwen3ForcedAlignerForConditionalGeneration"]
    write_json(dst / "config.json", raw)
    write_json(dst / "preprocessor_config.json", PREPROCESSOR)
    Tokenizer.from_file(str(dst / "tokenizer.json")).model.save(str(dst))
    return dst


@pytest.fixture(name="write_aligner_checkpoint", scope="session")
def fixture_write_aligner_checkpoint():
    """`write_aligner_checkpoint(dst, shape, layout="hf", seed=0)`: a random forced aligner."""
    return write_aligner_checkpoint


@pytest.fixture(name="write_checkpoint", scope="session")
def fixture_write_checkpoint():
    """`write_checkpoint(dst, shape, layout="hf", seed=0, shards=1, dtype=torch.float32, activation="gelu")`."""
    return write_checkpoint


@pytest.fixture(name="build_tokenizer", scope="session")
def fixture_build_tokenizer():
    """`build_tokenizer(dst)`: writes the test checkpoints' tokenizer files into the folder `dst`."""
    return build_tokenizer


@pytest.fixture(scope="session")
def checkpoint_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def shapes() -> list[Shape]:
    """The test shapes: `training.model.Dims` with a `name` (gqa2, gqa3, mha)."""
    return SHAPES


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: s.name)
def shape(request: pytest.FixtureRequest) -> Shape:
    """Each test shape in turn, for tests that run every shape."""
    return request.param


# ---------------------------------------------------------------------------------------------------------
# Memory between test modules

@pytest.fixture(autouse=True, scope="module")
def _return_freed_memory() -> Iterator[None]:
    """After each module, what its engines and tensors freed goes back to the OS: one process runs the whole suite,
    and without this its resident memory only ever grows (engine.host_memory)."""
    yield
    gc.collect()
    release_freed_memory()
