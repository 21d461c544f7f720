#!/usr/bin/env python3
"""Measures which syllables whisper mistakes for which on recorded calls.

Reads eval reports (`renewal-bot eval … --json report.json`), aligns each turn's reference
text with its transcript character by character (Levenshtein), and counts the substituted
pairs by toneless pinyin. Pairs that sound the same after the merges of src/text.rs are
already matched by the rules' sound-alike form and are left out. Writes the pairs seen at
least `--min-count` times as `script/confusions.toml`, which the intent rules use to
match phrases whose syllables were misheard (src/phonetic.rs).

Never feed it a report of a blind set you still measure on.

    tools/tts/.cache/venv/bin/python tools/asr/confusions.py report1.json … \
        --out script/confusions.toml
"""
import argparse
import collections
import json
import re
import sys

from pypinyin import lazy_pinyin, Style


def fuzzy(syllable: str) -> str:
    """The merges of src/text.rs::fuzzy_syllable."""
    s = syllable.replace("ü", "v")
    for a, b in (("zh", "z"), ("ch", "c"), ("sh", "s")):
        if s.startswith(a):
            s = b + s[len(a):]
    if s.startswith("l"):
        s = "n" + s[1:]
    if s.endswith("ng"):
        s = s[:-2] + "n"
    return s


def hanzi(text: str) -> list[str]:
    return [c for c in text if "\u4e00" <= c <= "\u9fff"]


def align(ref: list[str], hyp: list[str]) -> list[tuple[str, str]]:
    """Substituted (reference, hypothesis) characters of a minimal edit script."""
    n, m = len(ref), len(hyp)
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = i
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1,
                          d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]))
    pairs, i, j = [], n, m
    while i > 0 and j > 0:
        if d[i][j] == d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            if ref[i - 1] != hyp[j - 1]:
                pairs.append((ref[i - 1], hyp[j - 1]))
            i, j = i - 1, j - 1
        elif d[i][j] == d[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    return pairs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--out")
    ap.add_argument("--min-count", type=int, default=2)
    args = ap.parse_args()
    counts: collections.Counter = collections.Counter()
    turns = 0
    for path in args.reports:
        report = json.load(open(path, encoding="utf-8"))
        for case in report["cases"]:
            for turn in case["turns"]:
                if not turn.get("text") or turn.get("transcript") is None:
                    continue
                turns += 1
                for r, h in align(hanzi(turn["text"]), hanzi(turn["transcript"])):
                    rs = fuzzy(lazy_pinyin(r, style=Style.NORMAL)[0])
                    hs = fuzzy(lazy_pinyin(h, style=Style.NORMAL)[0])
                    # 嗯 / 呣 (n, m) are fillers, not syllables a rule phrase holds.
                    fillers = {"n", "m", "ng", "hm"}
                    if (rs != hs and re.fullmatch("[a-z]+", rs) and re.fullmatch("[a-z]+", hs)
                            and rs not in fillers and hs not in fillers):
                        counts[tuple(sorted((rs, hs)))] += 1
    kept = [(pair, n) for pair, n in counts.most_common() if n >= args.min_count]
    print(f"{turns} turns, {sum(counts.values())} substitutions across syllables, "
          f"{len(counts)} pairs, {len(kept)} seen ≥{args.min_count}×", file=sys.stderr)
    for (a, b), n in kept:
        print(f"  {a:>6} ~ {b:<6} {n}", file=sys.stderr)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as out:
            out.write("# Syllable pairs whisper base confuses on this project's recorded calls\n"
                      "# (after the merges of src/text.rs), measured by tools/asr/confusions.py\n"
                      f"# from {turns} turns of: {', '.join(p.split('/')[-1] for p in args.reports)}.\n"
                      "# Regenerate; do not edit by hand. count = times seen.\n")
            for (a, b), n in kept:
                out.write(f'[[pair]]\na = "{a}"\nb = "{b}"\ncount = {n}\n')
    return 0


if __name__ == "__main__":
    sys.exit(main())
