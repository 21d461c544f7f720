#!/usr/bin/env python3
"""Renders the callee fixtures: tests/fixtures/calls.toml (+ wav/),
tests/fixtures/holdout/calls.toml (+ wav/), tests/fixtures/blind/calls.toml (+ wav/),
tests/fixtures/blind2/calls.toml (+ wav/), tests/fixtures/blind3/calls.toml (+ wav/) and
tests/fixtures/blind4/calls.toml (+ wav/) from tools/tts/fixtures.toml.

Every case is checked against the dialog policy before anything is rendered: the expected
outcome in fixtures.toml must be what script/dialog.toml + shared/scenario.md give for the
turns' intents (decisive labels by precedence, pending outcomes, silence / hang-up at the
end, two unknowns in a row), no turn may follow a decisive one, dnc must follow the outcome,
and max_duration cases must cross 120 s inside a bot line with a margin, computed from the
clip durations in audio/manifest.toml. A mismatch stops the run.

Each turn: Kokoro-82M (the case's voice and speed, with a small per-turn jitter), peak level
varied, 0.3 s of silence at both ends, optional white/pink noise at the case's SNR, then a
telephone round trip (8 kHz, 300–3400 Hz band-pass, G.711 μ-law encode+decode) and saved as
16-bit PCM mono WAV at the case's rate (8 kHz, or 16 kHz upsampled from the 8 kHz line).
Unchanged turns are not re-rendered (cache in tools/tts/.cache/fixtures-cache.json).

Optional per-case options (cases without them render exactly as before):
  pitch = -2.0      semitones, by resampling (Kokoro speed compensated, so the length stays)
  level_db = -14.0  speech peak in dBFS before noise and line (default: random -9..-2)
  noise = "street:14"  kinds white, pink, babble, street (kind:SNR dB)
  codec = "gsm"     GSM 06.10 round trip (sox) on the 8 kHz line, before the μ-law leg
  loss = 2.0        packet loss in percent of the speech's 20 ms frames (seeded from the case name),
  loss_fill = "repeat"   lost frames become silence (default) or repeat the frame before
  lead_s = 0.8, trail_s = 0.5   silence before / after the speech (default 0.3 s each)

Development sets (DEV_SETS, each in its own input file beside fixtures.toml, e.g.
tools/tts/dev_harsh.toml → tests/fixtures/dev-harsh/) are checked against the policy like
the others, but not for new sentences: they reuse the text-only dev sets' sentences. They
may share no sentence with the held-out and blind sets (reported without the text) and no
voice with any set of fixtures.toml.

Usage: tools/tts/.cache/venv/bin/python tools/tts/render_fixtures.py [--check]
       [--set main|holdout|blind|blind2|blind3|blind4|dev_harsh]...   (default: all sets; every set is validated either way)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ttslib  # noqa: E402

REPO = ttslib.REPO
DATA = ttslib.HERE / "fixtures.toml"
CACHE_FILE = ttslib.CACHE / "fixtures-cache.json"
RENDER_VERSION = 3  # bump to re-render every turn after changing the audio chain
EXTRA_VERSION = 1  # bump to re-render the turns of cases with EXTRA_OPTIONS (their chain changed)
PAD_S = 0.3
LI_MING = "zm_yunjian"
# Fixture sets in fixtures.toml (`[[main]]`, `[[holdout]]`, `[[blind]]`, `[[blind2]]`,
# `[[blind3]]`, `[[blind4]]`) and where each is rendered, under tests/fixtures/. A set may
# share no sentence and no voice with the sets listed before it.
SETS = {"main": "", "holdout": "holdout", "blind": "blind", "blind2": "blind2",
        "blind3": "blind3", "blind4": "blind4"}
SET_TITLES = {"main": "main", "holdout": "held-out", "blind": "blind", "blind2": "second blind",
              "blind3": "third blind", "blind4": "fourth blind"}
# Development sets: set name -> (directory under tests/fixtures/, input file in tools/tts/).
# Built from the text-only dev sets (tools/tts/make_dev_harsh.py), so for tuning, not blind.
DEV_SETS = {"dev_harsh": ("dev-harsh", "dev_harsh.toml")}
SET_TITLES["dev_harsh"] = "harsh-line development"
# Sets whose sentences a development set must not contain (they are not for tuning).
NOT_FOR_TUNING = ("holdout", "blind", "blind2", "blind3", "blind4")
NOISE_KINDS = ("white", "pink", "babble", "street")
# Optional rendering options of a case (absent = the original chain, byte for byte).
EXTRA_OPTIONS = ("pitch", "level_db", "codec", "loss", "loss_fill", "lead_s", "trail_s")

OUTCOMES = ["self_service", "declined", "do_not_call", "written_only", "closing_account",
            "hostile", "callee_hangup", "no_response", "wrong_person", "max_duration"]
INTENTS = ["confirm_identity", "wrong_person", "busy", "will_renew", "self_service", "decline",
           "do_not_call", "written_only", "ask_call_again", "ask_why_call", "ask_close_account",
           "ask_data_handling", "stop_messages", "hostile_hangup", "acknowledge", "ask_repeat",
           "unknown"]
# scenario.md: precedence among decisive labels in one utterance
DECISIVE = ["wrong_person", "hostile_hangup", "written_only", "do_not_call", "decline",
            "self_service", "will_renew"]
QUESTIONS = ["ask_close_account", "ask_data_handling", "ask_call_again", "ask_why_call",
             "stop_messages"]
REST = ["busy", "ask_repeat", "confirm_identity", "acknowledge", "unknown"]
DNC_OUTCOMES = {"declined", "do_not_call", "written_only", "closing_account", "hostile",
                "callee_hangup"}
MAX_CALL_S = 120.0
MARGIN_S = 5.0
# Timing model of one turn: the turn is fed FEED_S after the bot's line ends; the bot's
# reply starts between REPLY_MIN_S and REPLY_MAX_S after the callee's speech ends
# (endpointing in call time, plus recognition if the driver counts it in call time).
FEED_S = 0.4
REPLY_MIN_S = 0.45
REPLY_NOM_S = 0.8
REPLY_MAX_S = 1.3
EDGE_S = 1.0
SILENCE_S = 10.0  # silence timeout after the bot's last line (scenario.md)


# --------------------------------------------------------------------------- policy

class Policy:
    def __init__(self):
        d = ttslib.load_toml(REPO / "script" / "dialog.toml")
        self.start = d["start"]
        self.opening = d["opening"]
        self.closing = d["closing"]
        self.states = {s["name"]: s for s in d["state"]}
        self.any = d.get("any", [])

    def transition(self, state: str, intent: str):
        for t in self.states[state].get("on", []):
            if t["intent"] == intent:
                return t
        for t in self.any:
            if t["intent"] == intent:
                return t
        return None


def effective_intent(labels: list[str]) -> str:
    for group in (DECISIVE, QUESTIONS, REST):
        for l in group:
            if l in labels:
                return l
    raise ValueError(labels)


def simulate(policy: Policy, case: dict, turns: list[dict], clip_ms: dict[str, int],
             speech_s: list[float] | None = None):
    """Walks the dialog policy. Returns (outcome, error or None, timing dict)."""
    state, pending, last = policy.start, None, list(policy.opening)
    offer_only = False  # the pending outcome was only offered: a hang-up does not accept it
    unknowns = 0
    bounds = {"min": REPLY_MIN_S, "nom": REPLY_NOM_S, "max": REPLY_MAX_S}
    t = {b: sum(clip_ms[l] for l in policy.opening) / 1000 for b in bounds}
    timeline = []  # per turn: speech end and reply span under each timing bound
    for i, turn in enumerate(turns):
        labels = turn["intents"]
        intent = effective_intent(labels)
        spk = (speech_s[i] if speech_s else 1.5) + 2 * PAD_S
        if case.get("lead_s") is None:
            s_end = {b: t[b] + FEED_S + spk - PAD_S for b in bounds}
        else:  # the speech ends after the case's leading silence
            s_end = {b: t[b] + FEED_S + float(case["lead_s"]) + spk - 2 * PAD_S for b in bounds}
        say, end = [], None
        if intent == "ask_repeat":
            rep = policy.states[state]["repeat"]
            say = list(last[-1:]) if rep == "@last" else [rep]
            unknowns = 0
        elif intent == "unknown":
            unknowns += 1
            if unknowns >= 2:
                end = "no_response"
            else:
                say = [policy.states[state]["reprompt"]]
        else:
            unknowns = 0
            tr = policy.transition(state, intent)
            if tr is None:
                return None, f"turn {i + 1}: no transition for {intent} in state {state}", {}
            say = list(tr.get("say", []))
            if tr.get("pending") or tr.get("offered"):
                pending = tr.get("pending") or tr["offered"]
                offer_only = "offered" in tr
            if "end" in tr:
                end = pending if (tr.get("end_with_pending") and pending) else tr["end"]
            else:
                state = tr["to"]
        dur = sum(clip_ms[l] for l in say) / 1000
        reply = {b: (s_end[b] + e, s_end[b] + e + dur) for b, e in bounds.items()}
        timeline.append({"turn": i + 1, "speech_end": s_end, "reply": reply, "say": say})
        t = {b: reply[b][1] for b in bounds}
        if say:
            last = say
        if end is not None:
            if i != len(turns) - 1:
                return end, f"turn {i + 1} ends the call ({end}) but more turns follow", {}
            return end, None, {"timeline": timeline}
    tail = case.get("end", "silent")
    timing = {"timeline": timeline, "end": t}
    if case["outcome"] == "max_duration":
        return "max_duration", None, timing
    if tail == "hangup":
        return (None if offer_only else pending) or "callee_hangup", None, timing
    return pending or "no_response", None, timing


def check_max_duration(name: str, timing: dict) -> str | None:
    """Where 120 s may fall. Under every timing bound it must come after the bot has begun
    its reply to the last turn (so that turn was heard and understood) and at least
    MARGIN_S before the 10 s silence timeout after that reply; under the nominal timing it
    must fall inside the reply itself, at least MARGIN_S after the callee stopped speaking
    and EDGE_S before the line ends."""
    last = timing["timeline"][-1]
    for key, (a, b) in last["reply"].items():
        if not (a + EDGE_S <= MAX_CALL_S <= b + SILENCE_S - MARGIN_S):
            return (f"{name}: last reply spans {a:.1f}–{b:.1f} s ({key} timing); 120 s must "
                    f"fall after its start and {MARGIN_S} s before the silence timeout")
    a, b = last["reply"]["nom"]
    if not (last["speech_end"]["nom"] + MARGIN_S <= MAX_CALL_S <= b - EDGE_S):
        return (f"{name}: nominal: last turn ends {last['speech_end']['nom']:.1f} s, reply "
                f"{a:.1f}–{b:.1f} s; 120 s must be inside the reply, {MARGIN_S} s after the turn")
    return None


# --------------------------------------------------------------------------- audio

def voice_key(voice: str) -> tuple:
    """The blend a voice string stands for, order and notation aside: `a+b`, `b+a` and
    `a:0.5+b:0.5` are the same voice (weights default to an equal share)."""
    parts = [p.partition(":") for p in voice.split("+")]
    n = len(parts)
    return tuple(sorted((name, round(float(w) if w else 1.0 / n, 3)) for name, _, w in parts))


def voice_style(k: ttslib.Kokoro, voice: str) -> str:
    """`a+b` or `a:0.6+b:0.4` blends voice styles; registers the blend under its name."""
    if "+" not in voice or voice in k._voices:
        return voice
    parts = []
    for p in voice.split("+"):
        name, _, w = p.partition(":")
        parts.append((name, float(w) if w else None))
    n = len(parts)
    style = sum(k.voice(name) * (w if w is not None else 1.0 / n) for name, w in parts)
    k._voices[voice] = style.astype(np.float32)
    return voice


def noise(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    w = rng.standard_normal(n)
    if kind == "pink":
        f = np.fft.rfft(w)
        scale = 1 / np.sqrt(np.maximum(np.arange(f.size), 1))
        w = np.fft.irfft(f * scale, n)
    elif kind == "babble":  # low, murmuring office noise: band-limited pink with slow AM
        f = np.fft.rfft(w)
        freqs = np.fft.rfftfreq(n, 1 / ttslib.SAMPLE_RATE)
        scale = 1 / np.sqrt(np.maximum(np.arange(f.size), 1)) * ((freqs > 150) & (freqs < 2500))
        w = np.fft.irfft(f * scale, n)
        t = np.arange(n) / ttslib.SAMPLE_RATE
        w = w * (0.6 + 0.4 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
    elif kind == "street":
        w = street_noise(rng, w)
    return (w / (np.sqrt(np.mean(w ** 2)) or 1.0)).astype(np.float32)


def street_noise(rng: np.random.Generator, w: np.ndarray) -> np.ndarray:
    """Kerbside noise from white noise `w`: a steady traffic bed (brown-ish, most energy
    below 1 kHz), cars passing by (band noise swelling and fading over 1-3 s) and now and
    then a short two-tone horn."""
    sr = ttslib.SAMPLE_RATE
    n = w.size
    t = np.arange(n) / sr
    freqs = np.fft.rfftfreq(n, 1 / sr)
    f = np.fft.rfft(w)
    bed = np.fft.irfft(f / np.maximum(freqs, 60.0) * (freqs < 4000), n)
    bed /= np.sqrt(np.mean(bed ** 2)) or 1.0
    hiss = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * ((freqs > 250) & (freqs < 3200)), n)
    hiss /= np.sqrt(np.mean(hiss ** 2)) or 1.0
    env = np.zeros(n)
    dur = n / sr
    for _ in range(int(rng.integers(1, 3 + int(dur // 2)))):
        c, width = rng.uniform(-0.5, dur + 0.5), rng.uniform(0.5, 1.4)
        env += rng.uniform(0.8, 2.0) * np.exp(-0.5 * ((t - c) / width) ** 2)
    out = bed + hiss * (0.25 + env)
    if rng.uniform() < 0.5:  # a horn somewhere in the clip
        start = rng.uniform(0, max(0.01, dur - 0.5))
        length = rng.uniform(0.2, 0.45)
        m = (t >= start) & (t < start + length)
        f0 = rng.uniform(380, 470)
        tone = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in (1, 2, 3)) + \
            sum(np.sin(2 * np.pi * f0 * 1.25 * h * t) / h for h in (1, 2, 3))
        ramp = np.clip(np.minimum(t - start, start + length - t) / 0.02, 0, 1)
        out = out + 1.5 * tone * ramp * m
    return out


def render_turn(k: ttslib.Kokoro, text: str, voice: str, speed: float, noise_spec: str | None,
                rate: int, seed: int, extra: dict | None = None,
                loss_seed: int = 0) -> tuple[np.ndarray, float]:
    """One callee turn. `extra` holds the case's optional options (EXTRA_OPTIONS); without
    them the chain and its random draws are exactly the original ones."""
    extra = extra or {}
    rng = np.random.default_rng(seed)
    sr = ttslib.SAMPLE_RATE
    pitch = float(extra.get("pitch") or 0.0)
    if pitch:
        # resampling shortens the speech by the pitch ratio: synthesize slower to keep it
        r = float(ttslib.pitch_ratio(pitch))
        a = k.synth(text, voice_style(k, voice), speed / r, sentence_pause=0.15)
        a = ttslib.pitch_shift(a, pitch)
    else:
        a = k.synth(text, voice_style(k, voice), speed, sentence_pause=0.15)
    a = ttslib.trim_silence(a, sr, keep_ms=20)
    speech_s = a.size / sr
    level = float(rng.uniform(-9.0, -2.0))  # always drawn, so the noise draws stay the same
    if extra.get("level_db") is not None:
        level = float(extra["level_db"])
    a = ttslib.normalize_peak(a, level)
    if extra.get("lead_s") is None and extra.get("trail_s") is None:
        pad = np.zeros(int(PAD_S * sr), np.float32)
        a = np.concatenate([pad, a, pad])
        lead, trail = pad.size, pad.size
    else:
        lead = int(float(extra.get("lead_s", PAD_S)) * sr)
        trail = int(float(extra.get("trail_s", PAD_S)) * sr)
        a = np.concatenate([np.zeros(lead, np.float32), a, np.zeros(trail, np.float32)])
    if noise_spec:
        kind, _, snr = noise_spec.partition(":")
        speech_rms = float(np.sqrt(np.mean(a[lead:a.size - trail] ** 2)))
        nz = noise(rng, kind, a.size) * speech_rms * 10 ** (-float(snr or 25) / 20)
        a = a + nz
    # telephone round trip
    x = ttslib.resample(a, sr, 8000)
    x = ttslib.bandpass(x, 8000, 300.0, 3400.0)
    x = np.clip(x, -1.0, 1.0)
    if extra.get("codec") == "gsm":  # mobile leg before the G.711 trunk
        x = ttslib.gsm_roundtrip(x)
    pcm = ttslib.mulaw_decode(ttslib.mulaw_encode(x)).astype(np.float32) / 32768.0
    if extra.get("loss"):
        pcm, _ = ttslib.packet_loss(pcm, 8000, float(extra["loss"]), np.random.default_rng(loss_seed),
                                    extra.get("loss_fill", "silence"))
    if rate != 8000:
        pcm = ttslib.resample(pcm, 8000, rate)
    return pcm, speech_s


# --------------------------------------------------------------------------- main

def norm_text(s: str) -> str:
    return re.sub(r"[\s，。？！、,.?!…“”\"'：:；;~～—-]", "", s)


def load_cases(data: dict, set_name: str) -> list[dict]:
    cases = []
    for c in data.get(set_name, []):
        turns = []
        for t in c["turns"]:
            text, intent = t[0], t[1]
            labels = intent if isinstance(intent, list) else [intent]
            turns.append({"text": text, "intent": intent, "intents": labels})
        cases.append({**c, "turns_parsed": turns})
    return cases


def validate(policy: Policy, cases: list[dict], clip_ms: dict[str, int], set_name: str,
             speech: dict | None = None) -> list[str]:
    """Errors; timing problems estimated before rendering (no `speech`) are only printed."""
    errors = []
    names = set()
    for c in cases:
        name = c["name"]
        if name in names:
            errors.append(f"{set_name}: duplicate case name {name}")
        names.add(name)
        if c["outcome"] not in OUTCOMES:
            errors.append(f"{name}: unknown outcome {c['outcome']}")
        if c.get("end", "silent") not in ("silent", "hangup"):
            errors.append(f"{name}: end must be silent or hangup")
        for t in c["turns_parsed"]:
            for l in t["intents"]:
                if l not in INTENTS:
                    errors.append(f"{name}: unknown intent {l}")
        errors += check_options(c)
        if errors:
            continue
        sp = speech.get(name) if speech else None
        if sp is None:  # estimate before rendering: ~0.23 s per character at speed 1
            sp = [len(norm_text(t["text"])) * 0.23 / float(c.get("speed", 1.0))
                  for t in c["turns_parsed"]]
        got, err, timing = simulate(policy, c, c["turns_parsed"], clip_ms, sp)
        if err:
            errors.append(f"{name}: {err}")
            continue
        if got != c["outcome"]:
            errors.append(f"{name}: the policy gives {got}, fixtures.toml says {c['outcome']}")
        if c["outcome"] == "max_duration":
            if any(effective_intent(t["intents"]) in ("ask_close_account", "ask_call_again", "busy")
                   for t in c["turns_parsed"]):
                errors.append(f"{name}: a max_duration case must not set a pending outcome")
            e = check_max_duration(name, timing)
            if e and speech:
                errors.append(e)
            elif e:
                print(f"warning (estimated speech lengths): {e}", file=sys.stderr)
        has_call_again = any("ask_call_again" in t["intents"] for t in c["turns_parsed"])
        want_dnc = c["outcome"] in DNC_OUTCOMES or has_call_again
        if c.get("dnc") is not None and c["dnc"] != want_dnc:
            errors.append(f"{name}: dnc = {c['dnc']} but the outcome {c['outcome']} gives {want_dnc}")
        c["dnc"] = want_dnc
        c["timing"] = timing
    return errors


def check_options(c: dict) -> list[str]:
    """The case's rendering options are in range (they are all optional)."""
    name, errs = c["name"], []
    if int(c.get("rate", 8000)) not in (8000, 16000):
        errs.append(f"{name}: rate must be 8000 or 16000")
    if c.get("noise"):
        kind, _, snr = str(c["noise"]).partition(":")
        if kind not in NOISE_KINDS:
            errs.append(f"{name}: noise kind {kind} is not one of {', '.join(NOISE_KINDS)}")
        try:
            float(snr or 25)
        except ValueError:
            errs.append(f"{name}: noise SNR {snr!r} is not a number")
    if c.get("pitch") is not None and not -4.0 <= float(c["pitch"]) <= 4.0:
        errs.append(f"{name}: pitch must be within ±4 semitones")
    if c.get("level_db") is not None and not -30.0 <= float(c["level_db"]) <= 0.0:
        errs.append(f"{name}: level_db must be within -30..0 dBFS")
    if c.get("codec") is not None and c["codec"] != "gsm":
        errs.append(f"{name}: codec must be \"gsm\" (or absent)")
    if c.get("loss") is not None and not 0.0 < float(c["loss"]) <= 5.0:
        errs.append(f"{name}: loss must be within 0..5 percent")
    if c.get("loss_fill") is not None and c["loss_fill"] not in ("silence", "repeat"):
        errs.append(f"{name}: loss_fill must be silence or repeat")
    for o in ("lead_s", "trail_s"):
        if c.get(o) is not None and not 0.05 <= float(c[o]) <= 3.0:
            errs.append(f"{name}: {o} must be within 0.05..3 s")
    return errs


def case_extra(c: dict) -> dict:
    return {o: c[o] for o in EXTRA_OPTIONS if c.get(o) is not None}


def write_manifest(path: Path, cases: list[dict], header: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(header)
        for c in cases:
            f.write("\n[[case]]\n")
            f.write(f"name = {ttslib.toml_str(c['name'])}\n")
            f.write(f"outcome = {ttslib.toml_str(c['outcome'])}\n")
            f.write(f"dnc = {'true' if c['dnc'] else 'false'}\n")
            f.write(f"end = {ttslib.toml_str(c.get('end', 'silent'))}\n")
            extra = "".join(f", {o} {v}" for o, v in case_extra(c).items())
            f.write(f"# voice {c['voice']}, speed {c['speed']}, noise {c.get('noise') or 'none'}, "
                    f"{c.get('rate', 8000)} Hz{extra}\n")
            for t in c["turns_parsed"]:
                f.write("[[case.turn]]\n")
                f.write(f"audio = {ttslib.toml_str(t['audio'])}\n")
                f.write(f"text = {ttslib.toml_str(t['text'])}\n")
                if isinstance(t["intent"], list):
                    f.write("intent = [" + ", ".join(ttslib.toml_str(x) for x in t["intent"]) + "]\n")
                else:
                    f.write(f"intent = {ttslib.toml_str(t['intent'])}\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="validate fixtures.toml only")
    ap.add_argument("--set", choices=list(SETS) + list(DEV_SETS), action="append")
    args = ap.parse_args()
    sets = args.set or list(SETS) + list(DEV_SETS)

    data = ttslib.load_toml(DATA)
    policy = Policy()
    manifest = ttslib.load_toml(REPO / "audio" / "manifest.toml")
    clip_ms = {c["id"]: int(c["duration_ms"]) for c in manifest["clip"]}
    all_sets = {s: load_cases(data, s) for s in SETS}

    errors = []
    for s, cases in all_sets.items():
        errors += validate(policy, cases, clip_ms, s)
    # no sentence of a set may appear in an earlier set; no voice of a set in an earlier set
    order = list(SETS)
    for j, s in enumerate(order[1:], 1):
        for e in order[:j]:
            e_texts = {norm_text(t["text"]) for c in all_sets[e] for t in c["turns_parsed"]}
            e_voices = {voice_key(c["voice"]) for c in all_sets[e]}
            for c in all_sets[s]:
                for t in c["turns_parsed"]:
                    if norm_text(t["text"]) in e_texts:
                        errors.append(f"{s} {c['name']}: sentence also in the {e} set: {t['text']}")
                if voice_key(c["voice"]) in e_voices:
                    errors.append(f"{s} {c['name']}: voice {c['voice']} is used in the {e} set")
    # development sets: own input files; no sentence of a set not for tuning, no voice of
    # any fixtures.toml set (the other sets' texts are never printed)
    used_voices = {voice_key(c["voice"]) for cs in all_sets.values() for c in cs}
    for s, (_, fname) in DEV_SETS.items():
        cases = load_cases(ttslib.load_toml(ttslib.HERE / fname), s)
        errors += validate(policy, cases, clip_ms, s)
        hidden = {norm_text(t["text"]) for e in NOT_FOR_TUNING for c in all_sets[e]
                  for t in c["turns_parsed"]}
        for c in cases:
            for i, t in enumerate(c["turns_parsed"]):
                if norm_text(t["text"]) in hidden:
                    errors.append(f"{s} {c['name']}: turn {i + 1} is a sentence of a held-out "
                                  "or blind set (not shown); drop the case")
            if voice_key(c["voice"]) in used_voices:
                errors.append(f"{s} {c['name']}: voice {c['voice']} is used in fixtures.toml")
        all_sets[s] = cases
    if any(LI_MING in c["voice"] for cs in all_sets.values() for c in cs):
        errors.append(f"{LI_MING} is 李明's voice; callee fixtures must not use it")
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    for s, cases in all_sets.items():
        n_turns = sum(len(c["turns_parsed"]) for c in cases)
        counts = {o: sum(c["outcome"] == o for c in cases) for o in OUTCOMES}
        print(f"{s}: {len(cases)} cases, {n_turns} turns, outcomes {counts}")
    if args.check:
        return 0

    cache = json.loads(CACHE_FILE.read_text()) if CACHE_FILE.exists() else {}
    k = None
    for s in sets:
        out_dir = REPO / "tests" / "fixtures" / (SETS[s] if s in SETS else DEV_SETS[s][0])
        wav_dir = out_dir / "wav"
        wav_dir.mkdir(parents=True, exist_ok=True)
        cases = all_sets[s]
        speech: dict[str, list[float]] = {}
        wanted = set()
        for c in cases:
            voice, speed = c["voice"], float(c["speed"])
            rate = int(c.get("rate", 8000))
            speech[c["name"]] = []
            for i, t in enumerate(c["turns_parsed"]):
                fname = f"{c['name']}-{i + 1}.wav"
                t["audio"] = f"wav/{fname}"
                path = wav_dir / fname
                wanted.add(fname)
                seed = int(hashlib.sha256(f"{s}/{c['name']}/{i}".encode()).hexdigest()[:8], 16)
                # small deterministic per-turn speed jitter around the case's speed
                sp = round(min(1.3, max(0.85, speed + ((seed % 7) - 3) * 0.015)), 3)
                extra = case_extra(c)
                key_parts = [RENDER_VERSION, t["text"], voice, sp, c.get("noise"), rate, seed]
                if extra:  # only cases with options get a longer key (old cache entries stay valid)
                    key_parts.append({"extra_version": EXTRA_VERSION, **extra})
                key = json.dumps(key_parts, ensure_ascii=False, sort_keys=True)
                ck = str(path.relative_to(REPO))
                if path.exists() and cache.get(ck, {}).get("key") == key and \
                        cache[ck].get("sha256") == ttslib.sha256_file(path):
                    speech[c["name"]].append(cache[ck]["speech_s"])
                    continue
                if k is None:
                    k = ttslib.Kokoro()
                loss_seed = int(hashlib.sha256(f"loss/{c['name']}/{i}".encode()).hexdigest()[:8], 16)
                pcm, speech_s = render_turn(k, t["text"], voice, sp, c.get("noise"), rate, seed,
                                            extra, loss_seed)
                ttslib.write_pcm16_wav(path, rate, pcm)
                cache[ck] = {"key": key, "sha256": ttslib.sha256_file(path), "speech_s": speech_s}
                speech[c["name"]].append(speech_s)
                print(f"  {t['audio']}  {speech_s:.2f} s  {t['text']}", flush=True)
            CACHE_FILE.write_text(json.dumps(cache, ensure_ascii=False, indent=0))
        for p in wav_dir.glob("*.wav"):
            if p.name not in wanted:
                p.unlink()
        # re-check the timing of max_duration cases with the real speech lengths
        errs = validate(policy, cases, clip_ms, s, speech)
        if errs:
            print("\n".join(errs), file=sys.stderr)
            return 1
        for c in cases:
            if c["outcome"] == "max_duration":
                tl = c["timing"]["timeline"][-1]
                spans = ", ".join(f"{k} {a:.1f}–{b:.1f} s" for k, (a, b) in tl["reply"].items())
                print(f"  {c['name']}: last turn ends {tl['speech_end']['nom']:.1f} s, "
                      f"last reply {spans}")
        src = "fixtures.toml" if s in SETS else DEV_SETS[s][1]
        header = (
            f"# Callee fixtures ({SET_TITLES[s]} set), generated by "
            f"tools/tts/render_fixtures.py from tools/tts/{src}.\n"
            "# Format: shared/scenario.md (eval contract). Do not edit by hand.\n"
        )
        if s in SETS:
            header += (
                "# Audio: Kokoro-82M voices, 0.3 s silence at both ends, some with noise, telephone\n"
                "# round trip (8 kHz, 300-3400 Hz, G.711 mu-law), 16-bit PCM mono WAV.\n"
            )
        if s == "holdout":
            header += ("# Held out: phrasings and voices not used in tests/fixtures/calls.toml; "
                       "for checking generalization, not for tuning rules.\n")
        elif s == "blind":
            header += ("# Blind: written without looking at script/intents.toml, "
                       "tests/fixtures/phrasings.txt or the other sets' sentences; voices not used "
                       "in the other sets. For measuring generalization only: never tune rules on it.\n")
        elif s == "blind2":
            header += ("# Second blind set: written without looking at script/intents.toml, "
                       "tests/fixtures/phrasings.txt or any other set's sentences; voice blends not "
                       "used in the other sets. For measuring generalization only: never tune rules "
                       "on it.\n")
        elif s == "blind3":
            header += ("# Third blind set: written without looking at script/intents.toml, "
                       "tests/fixtures/phrasings.txt or any other set's sentences; voice blends not "
                       "used in the other sets. For measuring generalization only: never tune rules "
                       "on it.\n")
        elif s == "blind4":
            header += ("# Fourth blind set: written without looking at the bot's rules (script/, src/), "
                       "tests/fixtures/phrasings.txt or any other set's sentences; voice blends not "
                       "used in the other sets. Some cases add a pitch shift, a GSM 06.10 leg, 20 ms "
                       "packet loss, street/babble noise or a set level (see the comment above each "
                       "case). For measuring generalization only: never tune rules on it.\n")
        elif s == "dev_harsh":
            header += (
                "# Harsh-line development set: cases of tests/fixtures/dev-a and dev-b (texts,\n"
                "# intents, outcome, dnc and end unchanged; name = dh- + the source name), spoken by\n"
                "# Kokoro voice blends not used in the other sets over bad phone lines: pitch shifts,\n"
                "# street/babble/pink noise at 10-20 dB SNR, speech peaks -1..-20 dBFS, varied silence\n"
                "# before and after the speech, 300-3400 Hz, GSM 06.10, G.711 mu-law, 20 ms packet\n"
                "# loss (see the comment above each case); 16-bit PCM mono WAV at 8 kHz.\n"
                "# For tuning speech recognition; not blind.\n")
        write_manifest(out_dir / "calls.toml", cases, header)
        n_turns = sum(len(c["turns_parsed"]) for c in cases)
        print(f"{s}: wrote {out_dir / 'calls.toml'} ({len(cases)} cases, {n_turns} turns)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
