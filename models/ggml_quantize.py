#!/usr/bin/env python3
"""Quantize a whisper.cpp ggml model to q8_0, as whisper.cpp's `quantize IN OUT q8_0` does.

Needs numpy only. Usage:

    python3 models/ggml_quantize.py models/ggml-base.bin models/ggml-base-q8_0.bin

Written from whisper.cpp 1.8.3's examples/quantize/quantize.cpp, ggml_common_quantize_0 in
examples/common-ggml.cpp and quantize_row_q8_0_ref in ggml/src/ggml-quants.c (no code copied):

  magic                      copied
  hparams (11 int32)         copied, except ftype := GGML_QNT_VERSION (2) * 1000
                             + GGML_FTYPE_MOSTLY_Q8_0 (7) = 2007, whatever the input's ftype
  mel filters, vocab         copied byte for byte
  tensors                    n_dims, name length, ttype, ne[0..n_dims), name, data
      A tensor is quantized (ttype := 8, GGML_TYPE_Q8_0) when it has exactly 2 dimensions and
      its name does not fully match one of the skip patterns below (regexes, as in quantize.cpp);
      it must then be f32 (0) or f16 (1). Everything else (1-D biases and norms, the 3-D conv
      weights, conv biases, positional embeddings) is copied unchanged. whisper.cpp 1.8.3 creates
      the 2-D weights with the file's type (q8_0), the conv weights as f16 and the skipped
      tensors as f32, so the result loads.

q8_0: each run of 32 consecutive values along ne[0] (a row; ne[0] must be a multiple of 32)
becomes a 34-byte block { float16 d; int8 qs[32] }, computed in float32:
    amax = max |x|;  d = amax / 127;  id = 1/d (0 when d == 0);  qs[j] = roundf(x[j] * id)
with roundf rounding halves away from zero; d is stored as IEEE half (round to nearest even,
which is what ggml's fp32 -> fp16 conversion does). f16 inputs are widened to f32 exactly first.

The output is a pure function of the input bytes, so its sha256 can be pinned.
"""

from __future__ import annotations

import argparse
import os
import re
import struct
import sys
import time
from pathlib import Path

import numpy as np

GGML_MAGIC = 0x67676D6C
GGML_QNT_VERSION = 2
GGML_QNT_VERSION_FACTOR = 1000
GGML_FTYPE_MOSTLY_Q8_0 = 7
FTYPE_Q8_0 = GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR + GGML_FTYPE_MOSTLY_Q8_0  # 2007

GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_Q8_0 = 0, 1, 8
QK8_0 = 32
BLOCK_Q8_0 = np.dtype([("d", "<f2"), ("qs", "i1", (QK8_0,))])  # packed: 2 + 32 = 34 bytes
assert BLOCK_Q8_0.itemsize == 34

N_HPARAMS = 11
FTYPE_INDEX = 10  # ftype is the last hparam

# whisper.cpp's examples/quantize/quantize.cpp: regexes of tensor names never quantized.
SKIP_PATTERNS = [
    "encoder.conv1.bias",
    "encoder.conv2.bias",
    "encoder.positional_embedding",
    "decoder.positional_embedding",
]
_SKIP = [re.compile(p) for p in SKIP_PATTERNS]

CHUNK_BLOCKS = 1 << 16  # blocks quantized per numpy pass (2 Mi values, bounded memory)


class QuantizeError(Exception):
    pass


def should_quantize(name: str, n_dims: int) -> bool:
    return n_dims == 2 and not any(p.fullmatch(name) for p in _SKIP)


def round_half_away(x: np.ndarray) -> np.ndarray:
    """C's roundf, elementwise: nearest integer, halves away from zero (np.rint rounds to even)."""
    t = np.trunc(x)
    frac = np.abs(x - t)  # exact in binary floating point
    return t + np.copysign((frac >= 0.5).astype(x.dtype), x)


def quantize_q8_0(values: np.ndarray) -> np.ndarray:
    """float32 values (length a multiple of 32) -> array of BLOCK_Q8_0 records."""
    x = np.ascontiguousarray(values, dtype=np.float32).reshape(-1, QK8_0)
    amax = np.max(np.abs(x), axis=1)
    d = amax / np.float32(127)
    inv = np.zeros_like(d)
    np.divide(np.float32(1), d, out=inv, where=d != 0)
    q = round_half_away(x * inv[:, None])
    blocks = np.empty(x.shape[0], dtype=BLOCK_Q8_0)
    blocks["d"] = d.astype("<f2")
    blocks["qs"] = q.astype(np.int8)
    return blocks


def dequantize_q8_0(raw: bytes | np.ndarray) -> np.ndarray:
    """q8_0 bytes (or BLOCK_Q8_0 records) -> float32 values, as ggml's dequantize_row_q8_0."""
    blocks = np.frombuffer(raw, dtype=BLOCK_Q8_0) if isinstance(raw, (bytes, bytearray, memoryview)) else raw
    return (blocks["qs"].astype(np.float32) * blocks["d"].astype(np.float32)[:, None]).reshape(-1)


class Reader:
    def __init__(self, f, path: Path):
        self.f, self.path = f, path

    def exact(self, n: int, what: str) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise QuantizeError(f"{self.path}: truncated ggml file (reading {what})")
        return data

    def ints(self, n: int, what: str, fmt: str = "i") -> tuple[int, ...]:
        return struct.unpack(f"<{n}{fmt}", self.exact(4 * n, what))


def quantize_file(inp: Path, out: Path, log=print) -> dict:
    """Writes the q8_0 model to OUT (via OUT.partial); returns counts and sizes."""
    stats = {"quantized": 0, "copied": 0, "tensors_in_bytes": 0, "tensors_out_bytes": 0}
    tmp = out.with_name(out.name + ".partial")
    try:
        with open(inp, "rb") as fi, open(tmp, "wb") as fo:
            r = Reader(fi, inp)
            (magic,) = r.ints(1, "magic", "I")
            if magic != GGML_MAGIC:
                raise QuantizeError(f"{inp}: not a ggml model (magic {magic:#010x}, expected {GGML_MAGIC:#010x})")
            hparams = list(r.ints(N_HPARAMS, "hparams"))
            stats["ftype_in"] = hparams[FTYPE_INDEX]
            hparams[FTYPE_INDEX] = FTYPE_Q8_0
            fo.write(struct.pack("<I", magic))
            fo.write(struct.pack(f"<{N_HPARAMS}i", *hparams))

            n_mel, n_fft = r.ints(2, "mel filter shape")
            if n_mel < 0 or n_fft < 0:
                raise QuantizeError(f"{inp}: bad mel filter shape {n_mel}x{n_fft}")
            fo.write(struct.pack("<ii", n_mel, n_fft))
            fo.write(r.exact(4 * n_mel * n_fft, "mel filters"))

            (n_vocab,) = r.ints(1, "vocab size")
            fo.write(struct.pack("<i", n_vocab))
            for i in range(n_vocab):
                (length,) = r.ints(1, f"token {i}", "I")
                fo.write(struct.pack("<I", length))
                fo.write(r.exact(length, f"token {i}"))

            while True:
                head = fi.read(12)
                if not head:
                    break
                if len(head) != 12:
                    raise QuantizeError(f"{inp}: truncated ggml file (tensor header)")
                n_dims, length, ttype = struct.unpack("<iii", head)
                if not 1 <= n_dims <= 4 or not 0 < length < 1024:
                    raise QuantizeError(f"{inp}: bad tensor header (n_dims {n_dims}, name length {length})")
                ne = r.ints(n_dims, "tensor shape")
                raw_name = r.exact(length, "tensor name")
                name = raw_name.decode("utf-8", errors="replace")
                if any(n <= 0 for n in ne):
                    raise QuantizeError(f"{inp}: tensor {name} has shape {ne}")
                if ttype not in (GGML_TYPE_F32, GGML_TYPE_F16):
                    raise QuantizeError(
                        f"{inp}: tensor {name} has ggml type {ttype}; only f32 (0) and f16 (1) inputs are "
                        "supported (is the input already quantized?)"
                    )
                count = int(np.prod(ne, dtype=np.int64))
                itemsize = 4 if ttype == GGML_TYPE_F32 else 2
                quantize = should_quantize(name, n_dims)
                if quantize and ne[0] % QK8_0:
                    raise QuantizeError(f"{inp}: tensor {name} has rows of {ne[0]} values, not a multiple of {QK8_0}")

                fo.write(struct.pack("<iii", n_dims, length, GGML_TYPE_Q8_0 if quantize else ttype))
                fo.write(struct.pack(f"<{n_dims}i", *ne))
                fo.write(raw_name)
                stats["tensors_in_bytes"] += count * itemsize
                if not quantize:
                    fo.write(r.exact(count * itemsize, f"tensor {name}"))
                    stats["tensors_out_bytes"] += count * itemsize
                    stats["copied"] += 1
                    continue
                dtype = "<f4" if ttype == GGML_TYPE_F32 else "<f2"
                done = 0
                while done < count:
                    n = min(count - done, CHUNK_BLOCKS * QK8_0)
                    values = np.frombuffer(r.exact(n * itemsize, f"tensor {name}"), dtype=dtype).astype(np.float32)
                    if not np.all(np.isfinite(values)):
                        raise QuantizeError(f"{inp}: tensor {name} holds inf or NaN; refusing to quantize it")
                    blocks = quantize_q8_0(values)
                    fo.write(blocks.tobytes())
                    stats["tensors_out_bytes"] += blocks.nbytes
                    done += n
                stats["quantized"] += 1
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    stats["hparams"] = hparams
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Quantize a whisper.cpp ggml model (f16/f32) to q8_0")
    parser.add_argument("input", type=Path, help="ggml model, e.g. models/ggml-base.bin")
    parser.add_argument("output", type=Path, help="file to write, e.g. models/ggml-base-q8_0.bin")
    args = parser.parse_args(argv)
    if args.input.resolve() == args.output.resolve():
        print("ggml_quantize: error: input and output are the same file", file=sys.stderr)
        return 1
    started = time.monotonic()
    try:
        stats = quantize_file(args.input, args.output)
    except (QuantizeError, OSError) as e:
        print(f"ggml_quantize: error: {e}", file=sys.stderr)
        return 1
    mib = 2**20
    print(
        f"ggml_quantize: wrote {args.output}: ftype {stats['ftype_in']} -> {FTYPE_Q8_0}, "
        f"{stats['quantized']} tensors q8_0, {stats['copied']} copied; tensor data "
        f"{stats['tensors_in_bytes'] / mib:.1f} -> {stats['tensors_out_bytes'] / mib:.1f} MiB "
        f"in {time.monotonic() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
