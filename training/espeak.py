"""espeak-ng through its C library (libespeak-ng, via ctypes): the same audio as the `espeak-ng` command, sample for
sample, plus where each word starts and ends in it, from the synthesizer's own word and phoneme events. Those times
are exact: they are where the synthesizer put the sounds, which is what the demo aligner learns and is measured
against. A word starts at its first phoneme and ends where the next pause or the next word's first phoneme starts.

The library keeps state from one utterance to the next (the second utterance of a process comes out a few samples
shorter than the command line's, and re-initializing after synthesis hangs), so each utterance is spoken by a fresh
process: `speak_with_words` starts one per utterance, a few of them at a time.
"""

from __future__ import annotations

import ctypes
import multiprocessing
from collections.abc import Iterable, Iterator
from ctypes import CFUNCTYPE, POINTER, Structure, Union, c_char, c_char_p, c_int, c_short, c_size_t, c_uint, c_void_p
from dataclasses import dataclass

import numpy as np

from qasr.engine.words import split_words

LIBRARY = "libespeak-ng.so.1"
AUDIO_OUTPUT_SYNCHRONOUS = 2
PHONEME_EVENTS = 0x0001
ENDPAUSE = 0x1000  # the command line's sentence pause at the end
POS_CHARACTER = 1
RATE, PITCH = 1, 3
EVENT_END_OF_LIST, EVENT_WORD, EVENT_PHONEME = 0, 1, 7


class _EventId(Union):
    _fields_ = [("number", c_int), ("name", c_char_p), ("string", c_char * 8)]


class _Event(Structure):
    _fields_ = [("type", c_int), ("unique_identifier", c_uint), ("text_position", c_int), ("length", c_int),
                ("audio_position", c_int), ("sample", c_int), ("user_data", c_void_p), ("id", _EventId)]


_CALLBACK = CFUNCTYPE(c_int, POINTER(c_short), c_int, POINTER(_Event))


@dataclass(frozen=True, slots=True)
class Utterance:
    text: str
    voice: str  # e.g. "en-us+m1"
    speed: int  # words per minute
    pitch: int  # 0..99


@dataclass(frozen=True, slots=True)
class WordTime:
    word: str  # as the aligner's word splitter gives it (qasr.engine.words.split_words)
    start: float | None  # seconds into the synthesized audio; None inside a run of words spoken as one
    end: float | None


@dataclass(frozen=True, slots=True)
class Spoken:
    samples: np.ndarray  # int16 at sample_rate, as `espeak-ng --stdout` writes them
    sample_rate: int
    words: list[WordTime] | None  # None: the synthesizer's first word is not the aligner's


_spoken_in_this_process = False


def speak_here(utterance: Utterance) -> Spoken:
    """Speaks one utterance with the library in this process, which must not have spoken before."""
    global _spoken_in_this_process
    if _spoken_in_this_process:
        raise RuntimeError("libespeak-ng has spoken in this process already; its next audio would differ")
    _spoken_in_this_process = True
    # the breath noise of voice variants such as f3 comes from libc's rand(), whose state a forked child inherits
    # from its parent (whatever called rand() there): start from a new process's, as the command line does
    ctypes.CDLL(None).srand(1)
    lib = ctypes.CDLL(LIBRARY)
    lib.espeak_Synth.argtypes = [c_char_p, c_size_t, c_uint, c_int, c_uint, c_uint, c_void_p, c_void_p]
    lib.espeak_SetVoiceByName.argtypes = [c_char_p]
    sample_rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, None, PHONEME_EVENTS)
    if sample_rate <= 0:
        raise RuntimeError("libespeak-ng could not start (no espeak-ng-data?)")
    chunks: list[np.ndarray] = []
    events: list[tuple[int, int, int, bytes]] = []  # type, text position, sample, phoneme name

    def receive(wav, num_samples: int, received) -> int:
        if wav and num_samples > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while received[i].type != EVENT_END_OF_LIST:
            event = received[i]
            name = bytes(event.id.string) if event.type == EVENT_PHONEME else b""
            events.append((event.type, event.text_position, event.sample, name))
            i += 1
        return 0

    callback = _CALLBACK(receive)
    lib.espeak_SetSynthCallback(callback)
    lib.espeak_SetVoiceByName(utterance.voice.encode())
    lib.espeak_SetParameter(RATE, utterance.speed, 0)
    lib.espeak_SetParameter(PITCH, utterance.pitch, 0)
    data = utterance.text.encode()
    status = lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, ENDPAUSE, None, None)
    if status != 0:
        raise RuntimeError(f"espeak_Synth failed ({status})")
    lib.espeak_Synchronize()
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    return Spoken(samples, sample_rate, word_times(utterance.text, events, len(samples), sample_rate))


def word_times(text: str, events: list[tuple[int, int, int, bytes]], num_samples: int,
               sample_rate: int) -> list[WordTime] | None:
    """Each of the aligner's words of `text` timed from the synthesizer's events; None if its first word has none.

    The synthesizer runs some short words into the next ("not let", "in the") and reports one word for both:
    such a group's first word gets its start and its last word its end, and the times inside it stay unknown.
    """
    encoded = text.encode()
    spans = split_words(text)
    first_of = {span.start: i for i, span in enumerate(spans)}
    group = -1
    groups: list[int] = []  # the first word of each reported word that starts one of ours
    phonemes: list[tuple[int, int, bool]] = []  # group, sample, is a pause
    for kind, position, sample, name in events:
        if kind == EVENT_WORD:
            # positions count characters from 1, in the UTF-8 text the library was given
            word = first_of.get(len(encoded[:position - 1].decode(errors="ignore")))
            if word is not None and (not groups or word > groups[-1]):
                groups.append(word)
                group += 1
        elif kind == EVENT_PHONEME and group >= 0:
            phonemes.append((group, sample, name.startswith(b"_")))
    if not groups or groups[0] != 0:
        return None
    times: list[WordTime] = []
    for g, first in enumerate(groups):
        last = (groups[g + 1] if g + 1 < len(groups) else len(spans)) - 1
        own = [i for i, (owner, _, pause) in enumerate(phonemes) if owner == g and not pause]
        if not own:
            return None
        end = next((sample for owner, sample, pause in phonemes[own[-1] + 1:] if pause or owner > g), num_samples)
        for word in range(first, last + 1):
            times.append(WordTime(spans[word].text,
                                  phonemes[own[0]][1] / sample_rate if word == first else None,
                                  end / sample_rate if word == last else None))
    return times


def speak_with_words(utterances: Iterable[Utterance], workers: int = 2) -> Iterator[Spoken]:
    """Each utterance spoken by a fresh forked process, `workers` at a time, in order."""
    # fork: a child starts in milliseconds with everything imported and no synthesizer state (forkserver and spawn
    # children import the caller's main module again: a second or more with torch). A fork copies the caller's page
    # tables, so it slows as the caller's memory fills with audio: 40 clips/s falls to about 15 by 3 GB.
    with multiprocessing.get_context("fork").Pool(workers, maxtasksperchild=1) as pool:
        yield from pool.imap(speak_here, utterances, chunksize=1)
