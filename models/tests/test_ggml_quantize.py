"""Tests for models/ggml_quantize.py (ggml f16/f32 -> q8_0) on a tiny synthetic whisper ggml file.

Run: python3 -m unittest discover models/tests   (numpy only, no network, well under a second)
"""

import contextlib
import importlib.util
import io
import math
import struct
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("ggml_quantize", HERE.parent / "ggml_quantize.py")
gq = importlib.util.module_from_spec(_spec)
sys.modules["ggml_quantize"] = gq
_spec.loader.exec_module(gq)

HPARAMS = [9, 6, 64, 2, 1, 5, 64, 2, 1, 4, 1]  # n_vocab .. n_mels, ftype 1 (f16)
TOKENS = [b"!", b" hello", "场".encode("utf-8"), b"\n", b""]

# Halves (exact in f16) whose rounding tells roundf (away from zero) from rint (to even).
# The block's amax is 127, so d = 1, id = 1 and x * id = x.
HALVES = [0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 126.5, -126.5, 3.5, 4.5, -0.25, 0.75, 0.0, -0.0, 127.0, -127.0]
HALVES_ROUNDED = [1, -1, 2, -2, 3, -3, 127, -127, 4, 5, 0, 1, 0, 0, 127, -127]


def ggml_tensor(name, array, ttype, ne):
    """One tensor record: n_dims, name length, ttype, ne (innermost first), name, data."""
    raw = name.encode("utf-8")
    head = struct.pack("<iii", len(ne), len(raw), ttype) + struct.pack(f"<{len(ne)}i", *ne) + raw
    return head + np.ascontiguousarray(array).tobytes()


def synthetic_tensors(rng):
    """(name, array, ttype) in a whisper-like order; arrays are [ne[-1], ..., ne[0]] row-major."""
    f16 = lambda *shape: (rng.standard_normal(shape) * 0.1).astype("<f2")  # noqa: E731
    f32 = lambda *shape: (rng.standard_normal(shape) * 0.1).astype("<f4")  # noqa: E731
    halves = np.array(HALVES * 4, dtype="<f2").reshape(2, 32)  # 2 rows of 32: two blocks
    zeros = np.zeros((1, 64), dtype="<f2")  # an all-zero row: d = 0
    return [
        ("encoder.positional_embedding", f32(6, 64), 0),
        ("encoder.conv1.weight", f16(64, 4, 3), 1),  # 3-D: stays f16
        ("encoder.conv1.bias", f32(64, 1), 0),  # 2-D [1, 64] but skipped by name
        ("encoder.conv2.weight", f16(64, 64, 3), 1),
        ("encoder.conv2.bias", f32(64, 1), 0),
        ("encoder.blocks.0.attn.query.weight", f16(64, 64), 1),
        ("encoder.blocks.0.attn.query.bias", f32(64), 0),  # 1-D: copied
        ("encoder.blocks.0.mlp.0.weight", f32(128, 64), 0),  # f32 2-D: quantized too
        ("encoder.blocks.0.mlp.2.weight", f16(64, 128), 1),
        ("encoder.ln_post.weight", f32(64), 0),
        ("decoder.positional_embedding", f32(5, 64), 0),
        ("decoder.token_embedding.weight", f16(9, 64), 1),
        ("decoder.blocks.0.cross_attn.key.weight", np.concatenate([halves.reshape(1, 64), zeros]), 1),
        ("decoder.ln.bias", f32(64), 0),
    ]


QUANTIZED = {
    "encoder.blocks.0.attn.query.weight",
    "encoder.blocks.0.mlp.0.weight",
    "encoder.blocks.0.mlp.2.weight",
    "decoder.token_embedding.weight",
    "decoder.blocks.0.cross_attn.key.weight",
}


def write_ggml(path, tensors, hparams=HPARAMS, tokens=TOKENS, magic=0x67676D6C):
    filters = np.arange(4 * 201, dtype="<f4").reshape(4, 201) / 1000
    out = bytearray(struct.pack("<I", magic) + struct.pack("<11i", *hparams))
    out += struct.pack("<ii", *filters.shape) + filters.tobytes()
    out += struct.pack("<i", len(tokens))
    for t in tokens:
        out += struct.pack("<i", len(t)) + t
    header_size = len(out)
    for name, array, ttype in tensors:
        out += ggml_tensor(name, array, ttype, tuple(reversed(array.shape)))
    path.write_bytes(bytes(out))
    return header_size


def read_ggml(path):
    """(magic, hparams, header bytes after hparams, {name: (n_dims, ttype, ne, raw data)}, order)."""
    data = path.read_bytes()
    pos = 0

    def ints(n):
        nonlocal pos
        values = struct.unpack_from(f"<{n}i", data, pos)
        pos += 4 * n
        return values

    magic = struct.unpack_from("<I", data, 0)[0]
    pos = 4
    hparams = list(ints(11))
    body_start = pos
    rows, cols = ints(2)
    pos += 4 * rows * cols
    (n_tokens,) = ints(1)
    for _ in range(n_tokens):
        (length,) = ints(1)
        pos += length
    body = data[body_start:pos]
    tensors, order = {}, []
    while pos < len(data):
        n_dims, name_len, ttype = ints(3)
        ne = ints(n_dims)
        name = data[pos:pos + name_len].decode()
        pos += name_len
        count = int(np.prod(ne))
        size = {0: 4 * count, 1: 2 * count, 8: count // 32 * 34}[ttype]
        tensors[name] = (n_dims, ttype, ne, data[pos:pos + size])
        order.append(name)
        pos += size
    return magic, hparams, body, tensors, order


def reference_block(values):
    """quantize_row_q8_0_ref for one block, scalar by scalar in float32, roundf in plain Python."""
    x = [np.float32(v) for v in values]
    amax = np.float32(0)
    for v in x:
        amax = max(amax, np.float32(abs(v)))
    d = np.float32(amax / np.float32(127))
    inv = np.float32(np.float32(1) / d) if d != 0 else np.float32(0)
    qs = []
    for v in x:
        x0 = float(np.float32(v * inv))
        qs.append(int(math.copysign(math.floor(abs(x0) + 0.5), x0)))  # exact for float32 x0
    return struct.pack("<e", float(d)) + struct.pack("<32b", *qs)


def ggml_fp32_to_fp16_bits(f):
    """ggml's ggml_compute_fp32_to_fp16 (the FP16 library's branch-free conversion), vectorized."""
    f = np.asarray(f, dtype=np.float32)
    with np.errstate(over="ignore"):
        base = (np.abs(f) * np.float32(2.0**112)) * np.float32(2.0**-110)
    w = f.view(np.uint32).astype(np.uint64)
    shl1_w = (w + w) & 0xFFFFFFFF
    sign = w & 0x80000000
    bias = np.maximum(shl1_w & 0xFF000000, 0x71000000)
    base = ((bias >> 1) + 0x07800000).astype(np.uint32).view(np.float32) + base
    bits = base.view(np.uint32).astype(np.uint64)
    nonsign = ((bits >> 13) & 0x7C00) + (bits & 0x0FFF)
    return ((sign >> 16) | np.where(shl1_w > 0xFF000000, 0x7E00, nonsign)).astype(np.uint16)


class QuantizeTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)
        self.tensors = synthetic_tensors(np.random.default_rng(11))
        self.inp = self.dir / "in.bin"
        write_ggml(self.inp, self.tensors)

    def tearDown(self):
        self.tmp.cleanup()

    def quantize(self, name="out.bin", inp=None):
        out = self.dir / name
        gq.quantize_file(inp or self.inp, out, log=lambda _msg: None)
        return out

    def test_header_ftype_and_copied_filters_vocab(self):
        magic_in, hp_in, body_in, _, _ = read_ggml(self.inp)
        magic, hp, body, _, _ = read_ggml(self.quantize())
        self.assertEqual(magic, 0x67676D6C)
        self.assertEqual(hp[:10], hp_in[:10])
        self.assertEqual(hp[10], 2007)  # GGML_QNT_VERSION 2 * 1000 + GGML_FTYPE_MOSTLY_Q8_0 7
        self.assertEqual(body, body_in)  # mel filters and vocab byte for byte

    def test_which_tensors_are_quantized(self):
        _, _, _, tin, order_in = read_ggml(self.inp)
        _, _, _, tout, order_out = read_ggml(self.quantize())
        self.assertEqual(order_out, order_in)
        for name in order_in:
            with self.subTest(name=name):
                n_dims, ttype, ne, raw = tout[name]
                self.assertEqual((n_dims, ne), tin[name][:1] + tin[name][2:3])
                if name in QUANTIZED:
                    self.assertEqual(ttype, 8)
                    self.assertEqual(len(raw), int(np.prod(ne)) // 32 * 34)
                else:
                    self.assertEqual(ttype, tin[name][1])
                    self.assertEqual(raw, tin[name][3], "untouched tensor changed")

    def test_output_size(self):
        out = self.quantize()
        saved = sum(int(np.prod(a.shape)) * (a.itemsize - 34 / 32) for n, a, _ in self.tensors if n in QUANTIZED)
        self.assertEqual(out.stat().st_size, self.inp.stat().st_size - int(saved))

    def test_blocks_match_scalar_reference(self):
        _, _, _, tout, _ = read_ggml(self.quantize())
        for name, array, _ in self.tensors:
            if name not in QUANTIZED:
                continue
            with self.subTest(name=name):
                values = array.astype(np.float32).reshape(-1)
                expected = b"".join(reference_block(values[i:i + 32]) for i in range(0, values.size, 32))
                self.assertEqual(tout[name][3], expected)

    def test_blocks_run_along_rows(self):
        # A [2 rows x 64] tensor: block k covers row k // 2, columns 32 * (k % 2) ...; scaling one row
        # must change only that row's blocks.
        a = np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)
        b = a.copy()
        b[1] *= 8
        qa, qb = gq.quantize_q8_0(a.reshape(-1)), gq.quantize_q8_0(b.reshape(-1))
        self.assertEqual(qa[:2].tobytes(), qb[:2].tobytes())
        np.testing.assert_array_equal(qa["qs"][2:], qb["qs"][2:])
        np.testing.assert_array_equal(qb["d"][2:].astype(np.float32), (qa["d"][2:] * 8).astype(np.float32))

    def test_dequantized_within_half_step(self):
        _, _, _, tout, _ = read_ggml(self.quantize())
        for name, array, _ in self.tensors:
            if name not in QUANTIZED:
                continue
            with self.subTest(name=name):
                x = array.astype(np.float32).reshape(-1, 32)
                blocks = np.frombuffer(tout[name][3], dtype=gq.BLOCK_Q8_0)
                d32 = np.abs(x).max(axis=1) / np.float32(127)  # the float32 step before storage as f16
                d16 = blocks["d"].astype(np.float32)
                q = blocks["qs"].astype(np.float32)
                # Rounding error of x / d: at most half a step (plus float32 noise).
                self.assertTrue(np.all(np.abs(x - q * d32[:, None]) <= d32[:, None] * (0.5 + 1e-5)))
                # With the stored f16 step, add |q| * |d16 - d32| (at most 127 * d * 2^-11).
                bound = d32 * (0.5 + 1e-5) + 127 * np.abs(d16 - d32)
                err = np.abs(x - gq.dequantize_q8_0(tout[name][3]).reshape(-1, 32))
                self.assertTrue(np.all(err <= bound[:, None]))
                self.assertTrue(np.all(np.abs(blocks["qs"]).max(axis=1)[d32 > 0] == 127))

    def test_halves_round_away_from_zero(self):
        _, _, _, tout, _ = read_ggml(self.quantize())
        blocks = np.frombuffer(tout["decoder.blocks.0.cross_attn.key.weight"][3], dtype=gq.BLOCK_Q8_0)
        self.assertEqual(len(blocks), 4)
        for block in blocks[:2]:
            self.assertEqual(float(block["d"]), 1.0)
            self.assertEqual(block["qs"].tolist(), HALVES_ROUNDED * 2)
        for block in blocks[2:]:  # all-zero row: d = 0, id = 0, qs = 0
            self.assertEqual(block.tobytes(), b"\0" * 34)
        self.assertEqual(gq.round_half_away(np.float32([0.49999997, -0.49999997, 2.5, -3.5])).tolist(),
                         [0.0, -0.0, 3.0, -4.0])

    def test_block_layout(self):
        x = np.zeros(64, np.float32)
        x[0], x[1], x[31] = 31.75, -15.875, 0.125  # d = 31.75 / 127 = 0.25, x * id = 127, -63.5, 0.5
        x[32] = -1.0  # second block: d = 1/127, qs[0] = -127
        raw = gq.quantize_q8_0(x).tobytes()
        self.assertEqual(len(raw), 68)
        self.assertEqual(raw[:2], struct.pack("<e", 0.25))  # f16 d first, little-endian (0x3400)
        self.assertEqual(struct.unpack("<32b", raw[2:34]), (127, -64) + (0,) * 29 + (1,))
        self.assertEqual(raw[34:36], np.float32(np.float32(1) / np.float32(127)).astype("<f2").tobytes())
        self.assertEqual(struct.unpack("<32b", raw[36:68]), (-127,) + (0,) * 31)

    def test_f16_conversion_matches_ggml(self):
        rng = np.random.default_rng(5)
        exponents = rng.uniform(-30, 17, 200_000)
        values = (np.sign(rng.standard_normal(exponents.size)) * 2.0**exponents).astype(np.float32)
        values = np.concatenate([values, np.float32([0.0, -0.0, 65504, 65520, 1e-8, 2.0**-24, 2.0**-25])])
        with np.errstate(over="ignore"):  # 65520 overflows to inf in both
            numpy_bits = values.astype("<f2").view(np.uint16)
        np.testing.assert_array_equal(numpy_bits, ggml_fp32_to_fp16_bits(values))

    def test_deterministic(self):
        self.assertEqual(self.quantize("a.bin").read_bytes(), self.quantize("b.bin").read_bytes())

    def test_bad_inputs_are_refused_and_leave_nothing(self):
        cases = {
            "magic": lambda p: write_ggml(p, self.tensors, magic=0x12345678),
            "rows of 48": lambda p: write_ggml(p, [("decoder.blocks.0.attn.key.weight", np.ones((2, 48), "<f2"), 1)]),
            "ggml type 8": lambda p: write_ggml(p, [("x.weight", np.ones((1, 34), np.uint8), 8)]),
            "inf or NaN": lambda p: write_ggml(p, [("x.weight", np.full((1, 32), np.inf, "<f4"), 0)]),
            "truncated": lambda p: p.write_bytes(self.inp.read_bytes()[:-10]),
        }
        for reason, make in cases.items():
            with self.subTest(reason=reason):
                bad = self.dir / "bad.bin"
                make(bad)
                with self.assertRaisesRegex(gq.QuantizeError, reason):
                    self.quantize("bad-out.bin", inp=bad)
                self.assertFalse((self.dir / "bad-out.bin").exists())
                self.assertFalse((self.dir / "bad-out.bin.partial").exists())

    def test_command_line(self):
        out = self.dir / "cli.bin"
        with contextlib.redirect_stdout(io.StringIO()) as stdout, contextlib.redirect_stderr(io.StringIO()) as stderr:
            self.assertEqual(gq.main([str(self.inp), str(out)]), 0)
            self.assertEqual(gq.main([str(self.dir / "missing.bin"), str(self.dir / "x.bin")]), 1)
            self.assertEqual(gq.main([str(self.inp), str(self.inp)]), 1)
        self.assertIn("5 tensors q8_0, 9 copied", stdout.getvalue())
        self.assertIn("ggml_quantize: error:", stderr.getvalue())
        self.assertEqual(out.read_bytes(), self.quantize().read_bytes())


if __name__ == "__main__":
    unittest.main()
