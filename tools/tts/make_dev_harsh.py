#!/usr/bin/env python3
"""Writes tools/tts/dev_harsh.toml: the harsh-line development set, 60 cases taken from the
text-only dev sets tests/fixtures/dev-a and dev-b (30 each) with seeded line impairments.
render_fixtures.py then renders it to tests/fixtures/dev-harsh/ (`--set dev_harsh`).

Choice of cases (seeded, repeatable): only cases that the renderer's policy check accepts
as they are (outcome and dnc as labelled) and that share no sentence with the held-out or
blind sets; per source 3 cases of every outcome label in it plus one more of self_service,
declined and do_not_call, preferring cases with two or more turns. Texts, intents, outcome,
dnc and end are copied unchanged; the name is `dh-` + the source name.

Impairments (seeded, balanced over the 60 cases):
  voice     a blend of two Chinese style vectors, half male-led, half female-led (lead
            weight 0.55-0.9, or 0.7-0.9 when the second voice is of the other sex), every
            blend new
            (zm_yunjian = 李明, zm_yunxia and zf_xiaoni = poor quality are never used)
  pitch     ±1..3 semitones on 48 cases
  speed     0.9..1.2
  level_db  speech peak -20..-1 dBFS
  noise     street, babble or pink at 10..20 dB SNR on 52 cases
  codec     GSM 06.10 round trip on 30 cases
  loss      1..3 % of the 20 ms speech frames on 30 cases (a third concealed by repeat)
  lead_s / trail_s  0.1..0.8 s / 0.15..0.8 s of (noisy) line before / after the speech
All at 8 kHz.

Usage: tools/tts/.cache/venv/bin/python tools/tts/make_dev_harsh.py   (then render_fixtures.py --set dev_harsh)
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render_fixtures as rf  # noqa: E402
import ttslib  # noqa: E402

SEED = 20240613
OUT = ttslib.HERE / "dev_harsh.toml"
SOURCES = {"dev-a": ttslib.REPO / "tests/fixtures/dev-a/calls.toml",
           "dev-b": ttslib.REPO / "tests/fixtures/dev-b/calls.toml"}
PER_OUTCOME = 3
EXTRA_FOR = ("self_service", "declined", "do_not_call")
MALE = ["zm_yunxi", "zm_yunyang"]
FEMALE = ["zf_xiaobei", "zf_xiaoxiao", "zf_xiaoyi"]


def to_case(c: dict) -> dict:
    return {"name": "dh-" + c["name"], "outcome": c["outcome"], "dnc": c["dnc"],
            "end": c.get("end", "silent"),
            "turns": [[t["text"], t["intent"]] for t in c["turn"]]}


def candidates(policy, clip_ms, hidden: set[str], cases: list[dict]) -> tuple[list[dict], int, int]:
    ok, bad_policy, bad_hidden = [], 0, 0
    for c in cases:
        fc = to_case(c)
        parsed = rf.load_cases({"x": [dict(fc, voice="-", speed=1.0)]}, "x")
        if rf.validate(policy, parsed, clip_ms, "x"):
            bad_policy += 1
            continue
        if any(rf.norm_text(t["text"]) in hidden for t in c["turn"]):
            bad_hidden += 1
            continue
        ok.append(fc)
    return ok, bad_policy, bad_hidden


def choose(rng: np.random.Generator, cases: list[dict]) -> list[dict]:
    chosen = []
    for outcome in rf.OUTCOMES:
        group = [c for c in cases if c["outcome"] == outcome]
        if not group:
            continue
        multi = [group[i] for i in rng.permutation(len(group)) if len(group[i]["turns"]) >= 2]
        single = [group[i] for i in rng.permutation(len(group)) if len(group[i]["turns"]) < 2]
        want = PER_OUTCOME + (outcome in EXTRA_FOR)
        chosen += (multi + single)[:want]
    return chosen


def spread(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """A boolean mask with exactly k of n set, at seeded positions."""
    m = np.zeros(n, bool)
    m[rng.permutation(n)[:k]] = True
    return m


def blend(rng: np.random.Generator, male_led: bool, used: set) -> str:
    while True:
        lead = str(rng.choice(MALE if male_led else FEMALE))
        other = str(rng.choice([v for v in MALE + FEMALE if v != lead]))
        cross = (lead in MALE) != (other in MALE)  # keep a cross-gender blend clearly one sex
        w = round(float(rng.uniform(0.7 if cross else 0.55, 0.9)), 2)
        voice = f"{lead}:{w:.2f}+{other}:{1 - w:.2f}"
        if rf.voice_key(voice) not in used:
            used.add(rf.voice_key(voice))
            return voice


def impair(rng: np.random.Generator, cases: list[dict], used_voices: set) -> None:
    n = len(cases)
    male = spread(rng, n, n // 2)
    pitched = spread(rng, n, round(n * 0.8))
    noisy = spread(rng, n, round(n * 52 / 60))
    kinds = [["street", "babble", "pink"][i % 3] for i in rng.permutation(int(noisy.sum()))]
    gsm = spread(rng, n, n // 2)
    lossy = spread(rng, n, n // 2)
    for i, c in enumerate(cases):
        c["voice"] = blend(rng, bool(male[i]), used_voices)
        c["speed"] = round(float(rng.uniform(0.9, 1.2)), 2)
        if pitched[i]:
            c["pitch"] = round(float(rng.choice([-1, 1]) * rng.uniform(1.0, 3.0)) * 4) / 4
        c["level_db"] = round(float(rng.uniform(-20.0, -1.0)) * 2) / 2
        if noisy[i]:
            c["noise"] = f"{kinds.pop()}:{round(float(rng.uniform(10.0, 20.0)) * 2) / 2:g}"
        if gsm[i]:
            c["codec"] = "gsm"
        if lossy[i]:
            c["loss"] = round(float(rng.uniform(1.0, 3.0)), 1)
            if rng.uniform() < 1 / 3:
                c["loss_fill"] = "repeat"
        c["lead_s"] = round(float(rng.uniform(0.1, 0.8)), 2)
        c["trail_s"] = round(float(rng.uniform(0.15, 0.8)), 2)


def write(cases: list[dict]) -> None:
    keys = ["name", "outcome", "dnc", "end", "voice", "speed", "pitch", "level_db", "noise",
            "codec", "loss", "loss_fill", "lead_s", "trail_s"]
    lines = [
        "# Harsh-line development set, written by tools/tts/make_dev_harsh.py (do not edit by",
        "# hand: change the script and run it again), rendered by render_fixtures.py --set dev_harsh",
        "# into tests/fixtures/dev-harsh/. Cases of tests/fixtures/dev-a and dev-b, texts and labels",
        "# unchanged; options as in fixtures.toml plus lead_s / trail_s (see render_fixtures.py).",
        "# For tuning speech recognition on bad lines; not blind.",
    ]
    for c in cases:
        lines.append("")
        lines.append("[[dev_harsh]]")
        for k in keys:
            if k not in c:
                continue
            v = c[k]
            if isinstance(v, bool):
                lines.append(f"{k} = {'true' if v else 'false'}")
            elif isinstance(v, str):
                lines.append(f"{k} = {ttslib.toml_str(v)}")
            else:
                lines.append(f"{k} = {v!r}")
        lines.append("turns = [")
        for text, intent in c["turns"]:
            it = ("[" + ", ".join(ttslib.toml_str(x) for x in intent) + "]"
                  if isinstance(intent, list) else ttslib.toml_str(intent))
            lines.append(f"  [{ttslib.toml_str(text)}, {it}],")
        lines.append("]")
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> int:
    policy = rf.Policy()
    manifest = ttslib.load_toml(ttslib.REPO / "audio" / "manifest.toml")
    clip_ms = {c["id"]: int(c["duration_ms"]) for c in manifest["clip"]}
    data = ttslib.load_toml(rf.DATA)
    # compared as normalized text only; nothing of these sets is printed
    hidden = {rf.norm_text(t[0]) for s in rf.NOT_FOR_TUNING for c in data.get(s, []) for t in c["turns"]}
    used_voices = {rf.voice_key(c["voice"]) for s in rf.SETS for c in data.get(s, [])}
    rng = np.random.default_rng(SEED)
    chosen = []
    for src, path in SOURCES.items():
        cases = ttslib.load_toml(path)["case"]
        ok, bad_policy, bad_hidden = candidates(policy, clip_ms, hidden, cases)
        pick = choose(rng, ok)
        print(f"{src}: {len(cases)} cases, {len(ok)} usable ({bad_policy} fail the renderer's policy "
              f"check, {bad_hidden} share a sentence with a held-out/blind set); chose {len(pick)}")
        chosen += pick
    impair(rng, chosen, used_voices)
    write(chosen)
    print(f"wrote {OUT} ({len(chosen)} cases, {sum(len(c['turns']) for c in chosen)} turns)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
