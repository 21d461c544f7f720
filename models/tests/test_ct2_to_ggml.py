"""Tests for models/ct2_to_ggml.py on a tiny synthetic CTranslate2 Whisper checkpoint.

Run: python3 -m unittest discover models/tests   (numpy only, no network, about a second)
"""

import hashlib
import importlib.util
import json
import struct
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("ct2_to_ggml", HERE.parent / "ct2_to_ggml.py")
c2g = importlib.util.module_from_spec(_spec)
sys.modules["ct2_to_ggml"] = c2g
_spec.loader.exec_module(c2g)

# Tiny model: 2 heads, state 8, 1 encoder and 1 decoder layer, 4 mel bins.
N_STATE, N_HEAD, N_MELS, N_FF = 8, 2, 4, 16
N_AUDIO_CTX, N_TEXT_CTX = 6, 5
# Byte-level BPE text of the ordinary tokens, then the specials; n_vocab also covers timestamps.
TOKENS = ["!", "Ġhello", "åľº", "Ċ", "", "<|endoftext|>", "<|startoftranscript|>", "<|zh|>", "<|0.00|>"]
ORDINARY_BYTES = [b"!", b" hello", "场".encode("utf-8"), b"\n", b""]
N_VOCAB = len(TOKENS)

# sha256 of OpenAI whisper's assets/mel_filters.npz arrays, as little-endian float32.
OPENAI_MEL_SHA256 = {
    80: "4f2701b1d287d74a0dc9871026e9519d98cb76426615f2539b0d151a0ae4ec2e",
    128: "2a5f9822897750e047c85dea37cc268d3be0ecfd23c28a5f10da129d99d05afe",
}


def write_ct2(path: Path, variables: dict, aliases: dict, version: int = 6, dtype_override=None):
    """Writes a CTranslate2 model.bin (binary spec v6) the way ModelSpec._serialize does."""
    type_ids = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2,
                np.dtype(np.int32): 3, np.dtype(np.float16): 4}

    def string(s):
        b = s.encode("utf-8")
        return struct.pack("<H", len(b) + 1) + b + b"\0"

    out = bytearray(struct.pack("<I", version) + string("WhisperSpec") + struct.pack("<I", 3))
    out += struct.pack("<I", len(variables))
    for name in sorted(variables):
        value = np.asarray(variables[name])
        out += string(name) + struct.pack("<B", value.ndim)
        out += b"".join(struct.pack("<I", d) for d in value.shape)
        type_id = type_ids[value.dtype] if dtype_override is None or value.ndim < 2 else dtype_override
        raw = value.astype(value.dtype.newbyteorder("<")).tobytes()
        out += struct.pack("<B", type_id) + struct.pack("<I", len(raw)) + raw
    out += struct.pack("<I", len(aliases))
    for alias, target in sorted(aliases.items()):
        out += string(alias) + string(target)
    path.write_bytes(bytes(out))


def synthetic_checkpoint(rng):
    """Returns (variables, originals): originals are the unfused q/k/v arrays, by ggml name."""
    f16 = lambda *shape: rng.standard_normal(shape).astype(np.float16)  # noqa: E731
    v, orig = {}, {}

    def scalar(name, value, dtype):
        v[name] = np.array(value, dtype=dtype)

    def linear(scope, n_out, n_in):
        v[f"{scope}/weight"], v[f"{scope}/bias"] = f16(n_out, n_in), f16(n_out)

    def norm(scope):
        v[f"{scope}/gamma"], v[f"{scope}/beta"] = f16(N_STATE), f16(N_STATE)

    def self_attn(scope, ggml):
        q_w, k_w, v_w = f16(N_STATE, N_STATE), f16(N_STATE, N_STATE), f16(N_STATE, N_STATE)
        q_b, v_b = f16(N_STATE), f16(N_STATE)
        v[f"{scope}/linear_0/weight"] = np.concatenate([q_w, k_w, v_w])
        v[f"{scope}/linear_0/bias"] = np.concatenate([q_b, np.zeros(N_STATE, np.float16), v_b])
        linear(f"{scope}/linear_1", N_STATE, N_STATE)
        norm(f"{scope}/layer_norm")
        orig.update({f"{ggml}.query.weight": q_w, f"{ggml}.key.weight": k_w, f"{ggml}.value.weight": v_w,
                     f"{ggml}.query.bias": q_b, f"{ggml}.value.bias": v_b,
                     f"{ggml}.out.weight": v[f"{scope}/linear_1/weight"]})

    def cross_attn(scope, ggml):
        linear(f"{scope}/linear_0", N_STATE, N_STATE)
        k_w, v_w, v_b = f16(N_STATE, N_STATE), f16(N_STATE, N_STATE), f16(N_STATE)
        v[f"{scope}/linear_1/weight"] = np.concatenate([k_w, v_w])
        v[f"{scope}/linear_1/bias"] = np.concatenate([np.zeros(N_STATE, np.float16), v_b])
        linear(f"{scope}/linear_2", N_STATE, N_STATE)
        norm(f"{scope}/layer_norm")
        orig.update({f"{ggml}.query.weight": v[f"{scope}/linear_0/weight"], f"{ggml}.key.weight": k_w,
                     f"{ggml}.value.weight": v_w, f"{ggml}.value.bias": v_b,
                     f"{ggml}.out.bias": v[f"{scope}/linear_2/bias"]})

    def ffn(scope):
        linear(f"{scope}/linear_0", N_FF, N_STATE)
        linear(f"{scope}/linear_1", N_STATE, N_FF)
        norm(f"{scope}/layer_norm")

    scalar("encoder/num_heads", N_HEAD, np.int16)
    scalar("decoder/num_heads", N_HEAD, np.int16)
    scalar("decoder/pre_norm", 1, np.int8)
    scalar("decoder/activation", 1, np.int8)
    v["encoder/conv1/weight"], v["encoder/conv1/bias"] = f16(N_STATE, N_MELS, 3), f16(N_STATE)
    v["encoder/conv2/weight"], v["encoder/conv2/bias"] = f16(N_STATE, N_STATE, 3), f16(N_STATE)
    v["encoder/position_encodings/encodings"] = f16(N_AUDIO_CTX, N_STATE)
    norm("encoder/layer_norm")
    self_attn("encoder/layer_0/self_attention", "encoder.blocks.0.attn")
    ffn("encoder/layer_0/ffn")
    v["decoder/embeddings/weight"] = f16(N_VOCAB, N_STATE)
    v["decoder/position_encodings/encodings"] = f16(N_TEXT_CTX, N_STATE)
    norm("decoder/layer_norm")
    self_attn("decoder/layer_0/self_attention", "decoder.blocks.0.attn")
    cross_attn("decoder/layer_0/attention", "decoder.blocks.0.cross_attn")
    ffn("decoder/layer_0/ffn")
    orig["encoder.conv1.weight"] = v["encoder/conv1/weight"]
    orig["encoder.conv1.bias"] = v["encoder/conv1/bias"]
    orig["decoder.positional_embedding"] = v["decoder/position_encodings/encodings"]
    orig["decoder.token_embedding.weight"] = v["decoder/embeddings/weight"]
    orig["decoder.blocks.0.mlp.0.weight"] = v["decoder/layer_0/ffn/linear_0/weight"]
    orig["decoder.blocks.0.mlp_ln.weight"] = v["decoder/layer_0/ffn/layer_norm/gamma"]
    return v, orig


def read_ggml(path: Path):
    """Parses a whisper.cpp ggml file the way whisper.cpp's loader does."""
    data = path.read_bytes()
    pos = 0

    def ints(n):
        nonlocal pos
        values = struct.unpack_from(f"<{n}i", data, pos)
        pos += 4 * n
        return values

    magic, = ints(1)
    hparams = dict(zip(c2g.HPARAM_ORDER, ints(11)))
    rows, cols = ints(2)
    filters = np.frombuffer(data, "<f4", rows * cols, pos).reshape(rows, cols)
    pos += 4 * rows * cols
    n_tokens, = ints(1)
    tokens = []
    for _ in range(n_tokens):
        length, = ints(1)
        tokens.append(data[pos:pos + length])
        pos += length
    tensors = {}
    order = []
    while pos < len(data):
        n_dims, name_len, ftype = ints(3)
        ne = ints(n_dims)
        name = data[pos:pos + name_len].decode()
        pos += name_len
        dtype = {0: "<f4", 1: "<f2"}[ftype]
        count = int(np.prod(ne))
        array = np.frombuffer(data, dtype, count, pos).reshape(tuple(reversed(ne)))
        pos += count * np.dtype(dtype).itemsize
        tensors[name] = (ne, ftype, array)
        order.append(name)
    return magic, hparams, filters, tokens, tensors, order


def expected_names(n_enc=1, n_dec=1):
    def attn(p, cross=False):
        return [f"{p}.query.weight", f"{p}.query.bias", f"{p}.key.weight", f"{p}.value.weight",
                f"{p}.value.bias", f"{p}.out.weight", f"{p}.out.bias"]

    def ln(p):
        return [f"{p}.weight", f"{p}.bias"]

    def mlp(p):
        return [f"{p}.mlp.0.weight", f"{p}.mlp.0.bias", f"{p}.mlp.2.weight", f"{p}.mlp.2.bias"] + ln(f"{p}.mlp_ln")

    names = ["encoder.positional_embedding", "encoder.conv1.weight", "encoder.conv1.bias",
             "encoder.conv2.weight", "encoder.conv2.bias"]
    for i in range(n_enc):
        b = f"encoder.blocks.{i}"
        names += attn(f"{b}.attn") + ln(f"{b}.attn_ln") + mlp(b)
    names += ln("encoder.ln_post")
    names += ["decoder.positional_embedding", "decoder.token_embedding.weight"]
    for i in range(n_dec):
        b = f"decoder.blocks.{i}"
        names += attn(f"{b}.attn") + ln(f"{b}.attn_ln") + attn(f"{b}.cross_attn") + ln(f"{b}.cross_attn_ln") + mlp(b)
    names += ln("decoder.ln")
    return names


class ConverterTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)
        self.ckpt = self.dir / "ct2"
        self.ckpt.mkdir()
        self.variables, self.orig = synthetic_checkpoint(np.random.default_rng(7))
        write_ct2(self.ckpt / "model.bin", self.variables, {"decoder/projection/weight": "decoder/embeddings/weight"})
        (self.ckpt / "vocabulary.txt").write_text("\n".join(TOKENS) + "\n", encoding="utf-8")

    def tearDown(self):
        self.tmp.cleanup()

    def convert(self, name="out.bin"):
        out = self.dir / name
        c2g.convert(self.ckpt, out, log=lambda _msg: None)
        return out

    def test_header_and_hparams(self):
        magic, hparams, *_ = read_ggml(self.convert())
        self.assertEqual(magic, 0x67676D6C)
        self.assertEqual(hparams, {
            "n_vocab": N_VOCAB, "n_audio_ctx": N_AUDIO_CTX, "n_audio_state": N_STATE, "n_audio_head": N_HEAD,
            "n_audio_layer": 1, "n_text_ctx": N_TEXT_CTX, "n_text_state": N_STATE, "n_text_head": N_HEAD,
            "n_text_layer": 1, "n_mels": N_MELS, "ftype": 1,
        })

    def test_mel_filters(self):
        _, _, filters, *_ = read_ggml(self.convert())
        self.assertEqual(filters.shape, (N_MELS, 201))
        np.testing.assert_array_equal(filters, c2g.mel_filters(N_MELS))
        for n_mels, expected in OPENAI_MEL_SHA256.items():
            mel = c2g.mel_filters(n_mels)
            self.assertEqual(mel.shape, (n_mels, 201))
            self.assertEqual(hashlib.sha256(mel.astype("<f4").tobytes()).hexdigest(), expected,
                             f"{n_mels}-bin filters differ from OpenAI's mel_filters.npz")

    def test_vocab_is_ordinary_tokens_as_bytes(self):
        _, _, _, tokens, _, _ = read_ggml(self.convert())
        self.assertEqual(tokens, ORDINARY_BYTES)

    def test_vocab_from_json_list_and_tokenizer_json(self):
        reference = self.convert("txt.bin").read_bytes()
        (self.ckpt / "vocabulary.txt").unlink()
        (self.ckpt / "vocabulary.json").write_text(json.dumps(TOKENS), encoding="utf-8")
        self.assertEqual(self.convert("json.bin").read_bytes(), reference)
        (self.ckpt / "vocabulary.json").unlink()
        ordinary = {t: i for i, t in enumerate(TOKENS[:6])}
        added = [{"id": i, "content": t} for i, t in enumerate(TOKENS) if i >= 5]
        tok = {"model": {"vocab": ordinary}, "added_tokens": added}
        (self.ckpt / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
        self.assertEqual(self.convert("tok.bin").read_bytes(), reference)

    def test_tensor_names_order_shapes_and_types(self):
        _, _, _, _, tensors, order = read_ggml(self.convert())
        self.assertEqual(order, expected_names())
        for name, (ne, ftype, array) in tensors.items():
            with self.subTest(name=name):
                f32 = array.ndim < 2 or name in (
                    "encoder.conv1.bias", "encoder.conv2.bias",
                    "encoder.positional_embedding", "decoder.positional_embedding")
                self.assertEqual(ftype, 0 if f32 else 1)
        ne = {name: t[0] for name, t in tensors.items()}
        self.assertEqual(ne["encoder.conv1.weight"], (3, N_MELS, N_STATE))
        self.assertEqual(ne["encoder.conv2.weight"], (3, N_STATE, N_STATE))
        self.assertEqual(ne["encoder.conv1.bias"], (1, N_STATE))
        self.assertEqual(ne["encoder.conv2.bias"], (1, N_STATE))
        self.assertEqual(ne["encoder.positional_embedding"], (N_STATE, N_AUDIO_CTX))
        self.assertEqual(ne["decoder.positional_embedding"], (N_STATE, N_TEXT_CTX))
        self.assertEqual(ne["decoder.token_embedding.weight"], (N_STATE, N_VOCAB))
        self.assertEqual(ne["encoder.blocks.0.attn.key.weight"], (N_STATE, N_STATE))
        self.assertEqual(ne["decoder.blocks.0.mlp.0.weight"], (N_STATE, N_FF))
        self.assertEqual(ne["decoder.blocks.0.mlp.2.weight"], (N_FF, N_STATE))
        self.assertEqual(ne["decoder.ln.bias"], (N_STATE,))
        self.assertNotIn("encoder.blocks.0.attn.key.bias", tensors)
        self.assertNotIn("decoder.proj.weight", tensors)

    def test_qkv_split_and_values(self):
        _, _, _, _, tensors, _ = read_ggml(self.convert())
        for name, original in self.orig.items():
            with self.subTest(name=name):
                got = tensors[name][2]
                np.testing.assert_array_equal(got.reshape(original.shape).astype(np.float32),
                                              original.astype(np.float32))

    def test_deterministic(self):
        self.assertEqual(self.convert("a.bin").read_bytes(), self.convert("b.bin").read_bytes())

    def test_float32_checkpoint_gives_same_output(self):
        reference = self.convert("f16.bin").read_bytes()
        as_f32 = {k: (a.astype(np.float32) if a.dtype == np.float16 else a) for k, a in self.variables.items()}
        write_ct2(self.ckpt / "model.bin", as_f32, {"decoder/projection/weight": "decoder/embeddings/weight"})
        self.assertEqual(self.convert("f32.bin").read_bytes(), reference)

    def test_nonzero_key_bias_is_refused(self):
        bad = dict(self.variables)
        bias = bad["encoder/layer_0/self_attention/linear_0/bias"].copy()
        bias[N_STATE] = 1.0
        bad["encoder/layer_0/self_attention/linear_0/bias"] = bias
        write_ct2(self.ckpt / "model.bin", bad, {})
        with self.assertRaisesRegex(c2g.ConversionError, "key bias"):
            self.convert()
        self.assertFalse((self.dir / "out.bin").exists())
        self.assertFalse((self.dir / "out.bin.partial").exists())

    def test_quantized_checkpoint_is_refused(self):
        quantized = {k: (a.astype(np.int8) if a.ndim == 2 else a) for k, a in self.variables.items()}
        write_ct2(self.ckpt / "model.bin", quantized, {})
        with self.assertRaisesRegex(c2g.ConversionError, "int8"):
            self.convert()

    def test_wrong_version_and_truncation_are_refused(self):
        write_ct2(self.ckpt / "model.bin", self.variables, {}, version=5)
        with self.assertRaisesRegex(c2g.ConversionError, "version 5"):
            self.convert()
        write_ct2(self.ckpt / "model.bin", self.variables, {})
        data = (self.ckpt / "model.bin").read_bytes()
        (self.ckpt / "model.bin").write_bytes(data[: len(data) // 2])
        with self.assertRaisesRegex(c2g.ConversionError, "truncated"):
            self.convert()

    def test_command_line_reports_errors(self):
        (self.ckpt / "vocabulary.txt").unlink()
        self.assertEqual(c2g.main([str(self.ckpt), str(self.dir / "x.bin")]), 1)
        self.assertEqual(c2g.main([str(self.ckpt.parent / "missing"), str(self.dir / "x.bin")]), 1)


if __name__ == "__main__":
    unittest.main()
