#!/usr/bin/env python3
"""Convert a CTranslate2 Whisper checkpoint (model.bin + vocabulary) to whisper.cpp's ggml format.

Needs numpy only. Usage:

    python3 models/ct2_to_ggml.py CT2_DIR OUT.bin

CT2_DIR holds `model.bin` (CTranslate2 binary spec, version 6, `WhisperSpec`) and the vocabulary
as `vocabulary.txt` (one token a line), `vocabulary.json` (a JSON list) or `tokenizer.json`
(Hugging Face tokenizers). Weights may be float16 or float32 (quantized int8 models are refused).

Output layout (what whisper.cpp's loader reads, little-endian int32 unless said otherwise):

  magic 0x67676d6c
  hparams: n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer,
           n_text_ctx, n_text_state, n_text_head, n_text_layer, n_mels, ftype (1 = f16)
  mel filters: n_mels, n_fft_bins, then n_mels * n_fft_bins float32 (librosa slaney filters)
  vocab: count, then per token: byte length, raw bytes (byte-level BPE decoded to bytes;
         ordinary tokens only, special tokens are added by whisper.cpp itself)
  tensors: n_dims, name length, type (0 f32, 1 f16), dims innermost first, name, data

Tensor names and order follow OpenAI's PyTorch state dict, which is what whisper.cpp's own
converter (convert-pt-to-ggml.py) walks; 1-D tensors, conv biases and positional embeddings are
stored as f32, everything else as f16. CTranslate2 fuses the self-attention q/k/v projections
into one linear layer and the cross-attention k/v into another; they are split back here, and
the key bias (which Whisper does not have, CTranslate2 stores zeros) is dropped.

The output is a pure function of the input bytes (no timestamps, no platform-dependent maths
beyond IEEE arithmetic and the C library's exp/log on 82 scalars), so its sha256 can be pinned.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
from pathlib import Path

import numpy as np

GGML_MAGIC = 0x67676D6C
CT2_BINARY_VERSION = 6
# CTranslate2's DataType enum order (include/ctranslate2/types.h).
CT2_DTYPES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
NP_DTYPES = {"float32": np.float32, "int8": np.int8, "int16": np.int16, "int32": np.int32, "float16": np.float16}

SAMPLE_RATE = 16000
N_FFT = 400


class ConversionError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# CTranslate2 model.bin reader


def read_ct2(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """Returns (spec name, {variable name: array}); aliases are resolved to their target array."""
    data = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise ConversionError(f"{path}: truncated CTranslate2 file (at byte {pos})")
        values = struct.unpack_from(fmt, data, pos)
        pos += size
        return values

    def take_string() -> str:
        nonlocal pos
        (length,) = take("<H")
        raw = data[pos : pos + length]
        if len(raw) != length:
            raise ConversionError(f"{path}: truncated CTranslate2 file (string at byte {pos})")
        pos += length
        return raw.rstrip(b"\0").decode("utf-8")

    (version,) = take("<I")
    if version != CT2_BINARY_VERSION:
        raise ConversionError(
            f"{path}: CTranslate2 binary version {version}, this converter reads version {CT2_BINARY_VERSION}"
        )
    spec_name = take_string()
    (_revision,) = take("<I")
    (count,) = take("<I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = take_string()
        (rank,) = take("<B")
        shape = take("<" + "I" * rank) if rank else ()
        (type_id,) = take("<B")
        (num_bytes,) = take("<I")
        dtype = CT2_DTYPES.get(type_id)
        if dtype is None or dtype not in NP_DTYPES or (rank and not dtype.startswith("float")):
            raise ConversionError(
                f"{path}: variable {name} has data type {dtype or type_id}; only float16/float32 "
                "(and integer scalars) are supported — use an unquantized (float16) checkpoint"
            )
        raw = data[pos : pos + num_bytes]
        if len(raw) != num_bytes:
            raise ConversionError(f"{path}: truncated CTranslate2 file (variable {name})")
        pos += num_bytes
        array = np.frombuffer(raw, dtype=np.dtype(NP_DTYPES[dtype]).newbyteorder("<"))
        expected = int(np.prod(shape)) if shape else 1
        if array.size != expected:
            raise ConversionError(f"{path}: variable {name} has {array.size} values, shape {shape} needs {expected}")
        variables[name] = array.reshape(shape)
    (alias_count,) = take("<I")
    for _ in range(alias_count):
        alias = take_string()
        target = take_string()
        if target not in variables:
            raise ConversionError(f"{path}: alias {alias} points to missing variable {target}")
        variables[alias] = variables[target]
    if pos != len(data):
        raise ConversionError(f"{path}: {len(data) - pos} unexpected trailing bytes (damaged or concatenated wrongly?)")
    return spec_name, variables


# --------------------------------------------------------------------------------------------
# Vocabulary


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte <-> printable character table used by byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values = printable[:]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in byte_values:
            byte_values.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(byte_values, chars)}


def load_vocabulary(ct2_dir: Path) -> list[str]:
    """The checkpoint's tokens in id order, in byte-level BPE text form."""
    txt = ct2_dir / "vocabulary.txt"
    js = ct2_dir / "vocabulary.json"
    tok = ct2_dir / "tokenizer.json"
    if txt.is_file():
        # One token per line; byte-level BPE tokens never contain a raw newline. Split on "\n"
        # only (str.splitlines would also split on characters such as U+0085).
        lines = txt.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return lines
    if js.is_file():
        tokens = json.loads(js.read_text(encoding="utf-8"))
        if not isinstance(tokens, list):
            raise ConversionError(f"{js}: expected a JSON list of tokens")
        return tokens
    if tok.is_file():
        model = json.loads(tok.read_text(encoding="utf-8"))
        vocab = model["model"]["vocab"]
        added = {t["id"]: t["content"] for t in model.get("added_tokens", [])}
        size = max(list(vocab.values()) + list(added.keys())) + 1
        tokens = [""] * size
        for text, index in vocab.items():
            tokens[index] = text
        for index, text in added.items():
            tokens[index] = text
        return tokens
    raise ConversionError(f"{ct2_dir}: no vocabulary.txt, vocabulary.json or tokenizer.json")


def ggml_vocab(tokens: list[str]) -> list[bytes]:
    """Ordinary tokens (everything before <|endoftext|>) as raw bytes, as whisper.cpp expects.

    whisper.cpp numbers the tokens it reads 0..n-1 and derives the special tokens (endoftext,
    startoftranscript, languages, timestamps) from hparams.n_vocab itself, so they are not
    written — the same as OpenAI's tiktoken file used by convert-pt-to-ggml.py.
    """
    try:
        eot = tokens.index("<|endoftext|>")
    except ValueError:
        raise ConversionError("the vocabulary has no <|endoftext|> token") from None
    decoder = {c: b for b, c in bytes_to_unicode().items()}
    out = []
    for index, token in enumerate(tokens[:eot]):
        try:
            out.append(bytes(decoder[c] for c in token))
        except KeyError as e:
            raise ConversionError(f"token {index} {token!r} is not byte-level BPE text (character {e})") from None
    return out


# --------------------------------------------------------------------------------------------
# Mel filterbank (librosa.filters.mel(sr=16000, n_fft=400, n_mels=N), slaney scale and norm)


def mel_filters(n_mels: int, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Bit-identical to OpenAI whisper's mel_filters.npz for n_mels 80 and 128."""
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0

    def hz_to_mel(f: float) -> float:
        return min_log_mel + math.log(f / min_log_hz) / logstep if f >= min_log_hz else f / f_sp

    def mel_to_hz(m: float) -> float:
        return min_log_hz * math.exp(logstep * (m - min_log_mel)) if m >= min_log_mel else f_sp * m

    lo, hi = hz_to_mel(0.0), hz_to_mel(sample_rate / 2.0)
    n_points = n_mels + 2
    step = (hi - lo) / (n_points - 1)  # as np.linspace
    mels = [i * step + lo for i in range(n_points)]
    mels[-1] = hi
    mel_f = np.array([mel_to_hz(m) for m in mels], dtype=np.float64)
    fft_freqs = np.arange(1 + n_fft // 2, dtype=np.float64) * (1.0 / (n_fft * (1.0 / sample_rate)))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    return (weights.astype(np.float64) * enorm[:, None]).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Tensor mapping


def _count_layers(variables: dict[str, np.ndarray], prefix: str) -> int:
    n = 0
    while f"{prefix}/layer_{n}/ffn/linear_0/weight" in variables:
        n += 1
    return n


def _scalar(variables: dict[str, np.ndarray], name: str) -> int:
    if name not in variables:
        raise ConversionError(f"checkpoint lacks {name}")
    return int(variables[name].reshape(-1)[0])


def whisper_tensors(variables: dict[str, np.ndarray]):
    """Yields (ggml name, array) in the order of OpenAI's state dict."""

    def get(name: str) -> np.ndarray:
        if name not in variables:
            raise ConversionError(f"checkpoint lacks variable {name}")
        return variables[name]

    def split(name: str, parts: int) -> list[np.ndarray]:
        array = get(name)
        if array.shape[0] % parts:
            raise ConversionError(f"{name} has {array.shape[0]} rows, not divisible into {parts}")
        return np.split(array, parts, axis=0)

    def linear(ggml: str, ct2: str, bias: bool = True):
        yield f"{ggml}.weight", get(f"{ct2}/weight")
        if bias:
            yield f"{ggml}.bias", get(f"{ct2}/bias")

    def norm(ggml: str, ct2: str):
        yield f"{ggml}.weight", get(f"{ct2}/gamma")
        yield f"{ggml}.bias", get(f"{ct2}/beta")

    def self_attention(ggml: str, ct2: str):
        q_w, k_w, v_w = split(f"{ct2}/linear_0/weight", 3)
        q_b, k_b, v_b = split(f"{ct2}/linear_0/bias", 3)
        if np.any(k_b.astype(np.float32) != 0):
            raise ConversionError(f"{ct2}: non-zero key bias; whisper.cpp has no key bias")
        yield f"{ggml}.query.weight", q_w
        yield f"{ggml}.query.bias", q_b
        yield f"{ggml}.key.weight", k_w
        yield f"{ggml}.value.weight", v_w
        yield f"{ggml}.value.bias", v_b
        yield from linear(f"{ggml}.out", f"{ct2}/linear_1")

    def cross_attention(ggml: str, ct2: str):
        k_w, v_w = split(f"{ct2}/linear_1/weight", 2)
        k_b, v_b = split(f"{ct2}/linear_1/bias", 2)
        if np.any(k_b.astype(np.float32) != 0):
            raise ConversionError(f"{ct2}: non-zero key bias; whisper.cpp has no key bias")
        yield from linear(f"{ggml}.query", f"{ct2}/linear_0")
        yield f"{ggml}.key.weight", k_w
        yield f"{ggml}.value.weight", v_w
        yield f"{ggml}.value.bias", v_b
        yield from linear(f"{ggml}.out", f"{ct2}/linear_2")

    def mlp(ggml: str, ct2: str):
        yield from linear(f"{ggml}.mlp.0", f"{ct2}/ffn/linear_0")
        yield from linear(f"{ggml}.mlp.2", f"{ct2}/ffn/linear_1")
        yield from norm(f"{ggml}.mlp_ln", f"{ct2}/ffn/layer_norm")

    yield "encoder.positional_embedding", get("encoder/position_encodings/encodings")
    yield from linear("encoder.conv1", "encoder/conv1")
    yield from linear("encoder.conv2", "encoder/conv2")
    for i in range(_count_layers(variables, "encoder")):
        g, c = f"encoder.blocks.{i}", f"encoder/layer_{i}"
        yield from self_attention(f"{g}.attn", f"{c}/self_attention")
        yield from norm(f"{g}.attn_ln", f"{c}/self_attention/layer_norm")
        yield from mlp(g, c)
    yield from norm("encoder.ln_post", "encoder/layer_norm")

    yield "decoder.positional_embedding", get("decoder/position_encodings/encodings")
    yield "decoder.token_embedding.weight", get("decoder/embeddings/weight")
    for i in range(_count_layers(variables, "decoder")):
        g, c = f"decoder.blocks.{i}", f"decoder/layer_{i}"
        yield from self_attention(f"{g}.attn", f"{c}/self_attention")
        yield from norm(f"{g}.attn_ln", f"{c}/self_attention/layer_norm")
        yield from cross_attention(f"{g}.cross_attn", f"{c}/attention")
        yield from norm(f"{g}.cross_attn_ln", f"{c}/attention/layer_norm")
        yield from mlp(g, c)
    yield from norm("decoder.ln", "decoder/layer_norm")


F32_NAMES = {
    "encoder.conv1.bias",
    "encoder.conv2.bias",
    "encoder.positional_embedding",
    "decoder.positional_embedding",
}


def hparams_of(variables: dict[str, np.ndarray]) -> dict[str, int]:
    def shape(name: str) -> tuple[int, ...]:
        if name not in variables:
            raise ConversionError(f"checkpoint lacks variable {name}")
        return variables[name].shape

    n_vocab, n_text_state = shape("decoder/embeddings/weight")
    n_audio_ctx, n_audio_state = shape("encoder/position_encodings/encodings")
    n_text_ctx, _ = shape("decoder/position_encodings/encodings")
    n_mels = shape("encoder/conv1/weight")[1]
    return {
        "n_vocab": n_vocab,
        "n_audio_ctx": n_audio_ctx,
        "n_audio_state": n_audio_state,
        "n_audio_head": _scalar(variables, "encoder/num_heads"),
        "n_audio_layer": _count_layers(variables, "encoder"),
        "n_text_ctx": n_text_ctx,
        "n_text_state": n_text_state,
        "n_text_head": _scalar(variables, "decoder/num_heads"),
        "n_text_layer": _count_layers(variables, "decoder"),
        "n_mels": n_mels,
        "ftype": 1,
    }


HPARAM_ORDER = [
    "n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer",
    "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer", "n_mels", "ftype",
]


def convert(ct2_dir: Path, out_path: Path, log=print) -> dict[str, int]:
    """Writes the ggml file; returns the hparams. Writes to OUT.partial, renames at the end."""
    spec_name, variables = read_ct2(ct2_dir / "model.bin")
    if spec_name != "WhisperSpec":
        raise ConversionError(f"{ct2_dir / 'model.bin'} is a {spec_name}, not a WhisperSpec model")
    hparams = hparams_of(variables)
    log("hparams: " + ", ".join(f"{k}={hparams[k]}" for k in HPARAM_ORDER))
    vocab = ggml_vocab(load_vocabulary(ct2_dir))
    filters = mel_filters(hparams["n_mels"])

    tmp = out_path.with_name(out_path.name + ".partial")
    n_tensors = 0
    try:
        with open(tmp, "wb") as out:
            out.write(struct.pack("<i", GGML_MAGIC))
            out.write(struct.pack("<" + "i" * len(HPARAM_ORDER), *(hparams[k] for k in HPARAM_ORDER)))
            out.write(struct.pack("<ii", *filters.shape))
            out.write(filters.astype("<f4").tobytes())
            out.write(struct.pack("<i", len(vocab)))
            for token in vocab:
                out.write(struct.pack("<i", len(token)))
                out.write(token)
            for name, array in whisper_tensors(variables):
                if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
                    array = array.reshape(array.shape[0], 1)
                if array.ndim < 2 or name in F32_NAMES:
                    array, ftype = array.astype("<f4"), 0
                else:
                    array, ftype = array.astype("<f2"), 1
                encoded = name.encode("utf-8")
                out.write(struct.pack("<iii", array.ndim, len(encoded), ftype))
                out.write(struct.pack("<" + "i" * array.ndim, *reversed(array.shape)))
                out.write(encoded)
                out.write(np.ascontiguousarray(array).tobytes())
                n_tensors += 1
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log(f"wrote {out_path}: {len(vocab)} tokens, {filters.shape[0]}x{filters.shape[1]} mel filters, {n_tensors} tensors")
    return hparams


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert a CTranslate2 Whisper model to whisper.cpp ggml")
    parser.add_argument("ct2_dir", type=Path, help="folder with model.bin and vocabulary.txt/json or tokenizer.json")
    parser.add_argument("output", type=Path, help="ggml file to write, e.g. models/ggml-base.bin")
    args = parser.parse_args(argv)
    try:
        convert(args.ct2_dir, args.output)
    except (ConversionError, OSError) as e:
        print(f"ct2_to_ggml: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
