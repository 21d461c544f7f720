"""Shared pieces of tools/tts: offline Kokoro-82M (int8 ONNX) Mandarin synthesis and the
telephone audio helpers (resampling, G.711 μ-law, WAV writing).

Run ./setup first: it fills tools/tts/.cache with the venv, the model and the voices.
"""
from __future__ import annotations

import json
import os
import re
import struct
import wave
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
REPO = HERE.parent.parent
SAMPLE_RATE = 24_000
_MAX_TOKENS = 500


def _tomllib():
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pragma: no cover
        import tomli as tomllib  # type: ignore
    return tomllib


def load_toml(path: Path) -> dict:
    with open(path, "rb") as f:
        return _tomllib().load(f)


def toml_str(s: str) -> str:
    """A TOML basic string."""
    return json.dumps(s, ensure_ascii=False)


# --------------------------------------------------------------------------- synthesis

class Kokoro:
    """Kokoro-82M v1.0 with the Chinese voices of kokoro-js and misaki's Chinese G2P."""

    def __init__(self, threads: int = 2):
        import onnxruntime as ort
        from misaki import zh

        model = CACHE / "kokoro.onnx"
        if not model.exists():
            raise SystemExit(f"{model} is missing: run tools/tts/setup first")
        opts = ort.SessionOptions()
        # A fixed thread count keeps the float reductions, and so the output, repeatable.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(model), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.vocab = json.loads((CACHE / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        self.g2p = zh.ZHG2P()
        self._voices: dict[str, np.ndarray] = {}

    def voice(self, name: str) -> np.ndarray:
        if name not in self._voices:
            path = CACHE / "voices" / f"{name}.bin"
            if not path.exists():
                raise SystemExit(f"unknown voice {name} ({path} missing)")
            self._voices[name] = np.fromfile(path, dtype=np.float32).reshape(-1, 1, 256)
        return self._voices[name]

    @staticmethod
    def prepare_text(text: str) -> str:
        # misaki has no reading for 〇 (it is dropped); in years it is read 零.
        text = text.replace("〇", "零")
        # Quotes and brackets read as nothing; keep the sentence flat.
        text = re.sub(r"[“”‘’'\"（）()《》]", "", text)
        return text

    def phonemes(self, text: str) -> str:
        ps, _ = self.g2p(text)
        return ps

    def _infer(self, ps: str, style: np.ndarray, speed: float) -> np.ndarray:
        tokens = [self.vocab[c] for c in ps if c in self.vocab][: _MAX_TOKENS - 2]
        if not tokens:
            return np.zeros(0, np.float32)
        ref = style[min(len(tokens), len(style) - 1)]
        feed = {
            "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": np.asarray(ref, dtype=np.float32).reshape(1, 256),
            "speed": np.array([speed], dtype=np.float32),
        }
        if "input_ids" in self.inputs:  # other exports name the token input differently
            feed["input_ids"] = feed.pop("tokens")
        out = self.session.run(None, feed)[0]
        return np.asarray(out, np.float32).ravel()

    def synth(self, text: str, voice: str, speed: float = 1.0,
              sentence_pause: float = 0.22) -> np.ndarray:
        """float32 audio at 24 kHz for `text`; sentences are synthesized one at a time."""
        style = self.voice(voice)
        text = self.prepare_text(text)
        sentences = [s.strip() for s in re.split(r"(?<=[。！？!?；;])", text) if s.strip()]
        pieces = []
        for s in sentences:
            ps = self.phonemes(s)
            if len(ps) > _MAX_TOKENS - 10:
                # split long sentences at commas
                parts, cur = [], ""
                for chunk in re.split(r"(?<=[,，])\s*", ps):
                    if cur and len(cur) + len(chunk) > _MAX_TOKENS - 10:
                        parts.append(cur)
                        cur = chunk
                    else:
                        cur = f"{cur} {chunk}".strip()
                if cur:
                    parts.append(cur)
            else:
                parts = [ps]
            for p in parts:
                a = trim_silence(self._infer(p, style, speed), SAMPLE_RATE, keep_ms=30)
                if a.size:
                    pieces.append(a)
        gap = np.zeros(int(sentence_pause * SAMPLE_RATE), np.float32)
        out: list[np.ndarray] = []
        for i, p in enumerate(pieces):
            if i:
                out.append(gap)
            out.append(p)
        return np.concatenate(out) if out else np.zeros(0, np.float32)


# --------------------------------------------------------------------------- audio helpers

def trim_silence(audio: np.ndarray, rate: int, keep_ms: int = 50,
                 thresh_db: float = -40.0) -> np.ndarray:
    """Cuts leading/trailing silence, keeping `keep_ms` around the speech."""
    if audio.size == 0:
        return audio
    peak = float(np.max(np.abs(audio))) or 1.0
    win = max(1, rate // 100)  # 10 ms frames
    n = audio.size // win
    if n == 0:
        return audio
    frames = audio[: n * win].reshape(n, win)
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    loud = np.where(rms > peak * 10 ** (thresh_db / 20))[0]
    if loud.size == 0:
        return audio[:0]
    keep = int(rate * keep_ms / 1000)
    start = max(0, loud[0] * win - keep)
    end = min(audio.size, (loud[-1] + 1) * win + keep)
    return audio[start:end]


def normalize_peak(audio: np.ndarray, peak_dbfs: float) -> np.ndarray:
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak <= 0:
        return audio
    return (audio * (10 ** (peak_dbfs / 20) / peak)).astype(np.float32)


def resample(audio: np.ndarray, src: int, dst: int) -> np.ndarray:
    if src == dst:
        return audio.astype(np.float32)
    from math import gcd
    from scipy.signal import resample_poly

    g = gcd(src, dst)
    return resample_poly(audio.astype(np.float64), dst // g, src // g).astype(np.float32)


def bandpass(audio: np.ndarray, rate: int, lo: float = 300.0, hi: float = 3400.0) -> np.ndarray:
    from scipy.signal import butter, sosfiltfilt

    hi = min(hi, rate / 2 * 0.95)
    sos = butter(6, [lo, hi], btype="bandpass", fs=rate, output="sos")
    return sosfiltfilt(sos, audio.astype(np.float64)).astype(np.float32)


_BIAS = 0x84
_CLIP = 32635


def mulaw_encode(x: np.ndarray) -> np.ndarray:
    """G.711 μ-law, same bit pattern as src/audio/mulaw.rs; x is float in [-1, 1]."""
    s = np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int32)
    sign = np.where(s < 0, 0x80, 0)
    mag = np.minimum(np.abs(s), _CLIP) + _BIAS
    exponent = np.clip(np.floor(np.log2(mag)).astype(np.int32) - 7, 0, 7)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


def mulaw_decode(b: np.ndarray) -> np.ndarray:
    """μ-law bytes to int16."""
    b = ~b.astype(np.int32) & 0xFF
    sign = b & 0x80
    exponent = (b >> 4) & 0x07
    mantissa = b & 0x0F
    mag = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(sign != 0, -mag, mag).astype(np.int16)


def write_mulaw_wav(path: Path, rate: int, data: np.ndarray) -> None:
    """8-bit G.711 μ-law WAV (format tag 7), mono."""
    data = np.asarray(data, np.uint8).tobytes()
    fmt = struct.pack("<HHIIHHH", 7, 1, rate, rate, 1, 8, 0)
    fact = struct.pack("<I", len(data))
    body = b"WAVE"
    body += b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"fact" + struct.pack("<I", len(fact)) + fact
    body += b"data" + struct.pack("<I", len(data)) + data
    if len(data) % 2:
        body += b"\0"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def write_pcm16_wav(path: Path, rate: int, samples: np.ndarray) -> None:
    samples = np.asarray(samples)
    if samples.dtype != np.int16:
        samples = np.clip(np.round(samples * 32767.0), -32768, 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())


def sha256_file(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- line impairments
# Used by render_fixtures.py for the cases that ask for them (all optional, all deterministic).

def pitch_ratio(semitones: float) -> "Fraction":
    """The resampling ratio of a pitch shift, as a small fraction (exact and repeatable)."""
    from fractions import Fraction

    return Fraction(2 ** (float(semitones) / 12)).limit_denominator(200)


def pitch_shift(audio: np.ndarray, semitones: float) -> np.ndarray:
    """Shifts pitch (and formants) by resampling, like a tape played faster or slower:
    the result is shorter by the ratio for an upward shift, longer for a downward one
    (the caller synthesizes at speed / ratio to keep the length)."""
    if not semitones:
        return audio
    from scipy.signal import resample_poly

    r = pitch_ratio(semitones)
    # r = p/q > 1: keep q/p of the samples and play them at the same rate -> higher pitch.
    return resample_poly(audio.astype(np.float64), r.denominator, r.numerator).astype(np.float32)


def gsm_roundtrip(x: np.ndarray) -> np.ndarray:
    """GSM 06.10 full-rate encode + decode of 8 kHz float audio with sox (no dither, so the
    result is repeatable). Needs `sox` with its GSM format (apt-get install sox
    libsox-fmt-all)."""
    import shutil
    import subprocess

    sox = shutil.which("sox")
    if not sox:
        raise SystemExit("codec = \"gsm\" needs sox: apt-get install sox libsox-fmt-all")
    pcm = np.clip(np.round(np.asarray(x, np.float64) * 32767.0), -32768, 32767).astype("<i2")
    raw = ["-t", "raw", "-r", "8000", "-e", "signed-integer", "-b", "16", "-c", "1"]
    enc = subprocess.run([sox, "-D", "-R", "-V1", *raw, "-", "-t", "gsm", "-r", "8000", "-c", "1", "-"],
                         input=pcm.tobytes(), capture_output=True, check=True).stdout
    dec = subprocess.run([sox, "-D", "-R", "-V1", "-t", "gsm", "-r", "8000", "-c", "1", "-", *raw, "-"],
                         input=enc, capture_output=True, check=True).stdout
    y = np.frombuffer(dec, dtype="<i2").astype(np.float32) / 32768.0
    if y.size < x.size:
        y = np.concatenate([y, np.zeros(x.size - y.size, np.float32)])
    return y[: x.size]


def packet_loss(x: np.ndarray, rate: int, percent: float, rng: np.random.Generator,
                fill: str = "silence", frame_ms: int = 20) -> tuple[np.ndarray, list[int]]:
    """Drops `percent` % of the speech's 20 ms frames (at least one; frames within 30 dB of
    the loudest, so a loss is never wasted on the silent padding) at positions chosen by
    `rng`; a lost frame becomes silence, or (fill = "repeat") a copy of the frame before it,
    as a simple jitter buffer's concealment would do. Returns the audio and the lost frame
    indices."""
    n = max(1, rate * frame_ms // 1000)
    frames = x.size // n
    if frames < 2 or percent <= 0:
        return x, []
    rms = np.sqrt(np.mean(np.asarray(x[: frames * n], np.float64).reshape(frames, n) ** 2, axis=1))
    speech = np.where(rms > rms.max() * 10 ** (-30 / 20))[0]
    speech = speech[speech > 0]
    if speech.size == 0:
        return x, []
    k = min(speech.size, max(1, int(round(speech.size * float(percent) / 100))))
    lost = sorted(int(i) for i in rng.choice(speech, size=k, replace=False))
    y = np.array(x, np.float32, copy=True)
    for i in lost:
        if fill == "repeat":
            y[i * n:(i + 1) * n] = y[(i - 1) * n:i * n]
        else:
            y[i * n:(i + 1) * n] = 0.0
    return y, lost
