"""Audio I/O, resampling and the acoustic domains (noise, reverberation, telephone band)."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
from scipy import signal

SAMPLE_RATE = 16000


class AudioDecodeError(RuntimeError):
    pass


def load(path: str | Path, *, mono: bool = False) -> tuple[np.ndarray, int]:
    """Decode a file to float32 in [-1, 1]; shape (samples,) for mono, (samples, channels) otherwise."""
    import soundfile as sf  # imported here so GPU hosts without libsndfile can still import the library

    path = Path(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types; callers need one with the file named
        hint = ""
        if path.suffix.lower() == ".mp3":
            hint = " (MP3 needs libsndfile >= 1.1 with mpg123: `pip install -U soundfile`, or convert to FLAC)"
        raise AudioDecodeError(f"{path}: cannot decode audio: {e}{hint}") from None
    if data.shape[1] == 1 or mono:
        data = data.mean(axis=1)
    return data, sr


def info(path: str | Path) -> tuple[int, int, int]:
    """(sample_rate, channels, frames) from the header."""
    import soundfile as sf

    i = sf.info(str(path))
    return i.samplerate, i.channels, i.frames


def save(path: str | Path, wav: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(wav, -1.0, 1.0), sr, subtype="PCM_16", format="FLAC")


def resample(wav: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    if sr_in == sr_out:
        return wav.astype(np.float32)
    g = gcd(sr_in, sr_out)
    return signal.resample_poly(wav, sr_out // g, sr_in // g).astype(np.float32)


def rms_db(wav: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(wav, dtype=np.float64))) + 1e-12))


def add_noise(wav: np.ndarray, snr_db: float, rng: np.random.Generator, kind: str = "white") -> np.ndarray:
    noise = rng.standard_normal(len(wav)).astype(np.float32)
    if kind == "pink":  # 1/f spectrum by filtering white noise
        b, a = [0.049922035, -0.095993537, 0.050612699, -0.004408786], [1, -2.494956002, 2.017265875, -0.522189400]
        noise = signal.lfilter(b, a, noise).astype(np.float32)
    elif kind == "hum":
        t = np.arange(len(wav)) / SAMPLE_RATE
        noise = (np.sin(2 * np.pi * 50 * t) + 0.5 * np.sin(2 * np.pi * 150 * t)).astype(np.float32) + 0.1 * noise
    p_sig = np.mean(wav**2) + 1e-10
    p_noise = np.mean(noise**2) + 1e-10
    return (wav + noise * np.sqrt(p_sig / (p_noise * 10 ** (snr_db / 10)))).astype(np.float32)


def reverberate(wav: np.ndarray, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room impulse response: exponentially decaying noise after a direct path."""
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    rir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    rir[0] = 1.0
    rir /= np.sqrt(np.sum(rir**2))
    out = signal.fftconvolve(wav, rir)[: len(wav)]
    return (out * (np.max(np.abs(wav)) / (np.max(np.abs(out)) + 1e-9))).astype(np.float32)


def telephone(wav: np.ndarray) -> np.ndarray:
    """300-3400 Hz band, 8 kHz round trip and mu-law companding: a narrow-band phone channel."""
    sos = signal.butter(6, [300, 3400], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    x = signal.sosfilt(sos, wav)
    x = resample(resample(x, SAMPLE_RATE, 8000), 8000, SAMPLE_RATE)
    mu = 255.0
    x = np.clip(x, -1, 1)
    q = np.round((np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)) * 127) / 127
    return (np.sign(q) * ((1 + mu) ** np.abs(q) - 1) / mu).astype(np.float32)


def peak_normalize(wav: np.ndarray, peak: float = 0.7) -> np.ndarray:
    return (wav * (peak / (np.max(np.abs(wav)) + 1e-9))).astype(np.float32)
