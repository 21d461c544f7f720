//! Text normalization for recognition results and rule patterns: simplified Chinese, no
//! punctuation or spaces, and a "sound-alike" form in which characters that a phone line
//! and whisper confuse (same toneless, accent-merged pinyin) become one symbol.

use pinyin::ToPinyin;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// Simplified Chinese, lower-case, without spaces or punctuation.
pub fn normalize(raw: &str) -> String {
    let simplified = zhconv::zhconv(raw, zhconv::Variant::ZhHans);
    simplified
        .chars()
        .map(fold_width)
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Full-width ASCII (ＡＢＣ１２３) to its half-width form.
fn fold_width(c: char) -> char {
    match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        _ => c,
    }
}

/// The syllable of a Chinese character with tone removed and the merges that telephone
/// audio and regional accents blur: zh/z, ch/c, sh/s, n/l, -ng/-n. (Merging j/q/x and ü/i
/// as well made 去, 句 and 几 all sound like 续: far more false matches than slips caught.)
pub fn fuzzy_syllable(c: char) -> Option<String> {
    let plain = c.to_pinyin()?.plain();
    let mut syllable = plain.replace('ü', "v");
    for (from, to) in [("zh", "z"), ("ch", "c"), ("sh", "s")] {
        if let Some(rest) = syllable.strip_prefix(from) {
            syllable = format!("{to}{rest}");
        }
    }
    if let Some(rest) = syllable.strip_prefix('l') {
        syllable = format!("n{rest}");
    }
    if let Some(stem) = syllable.strip_suffix("ng") {
        syllable = format!("{stem}n");
    }
    Some(syllable)
}

/// Private-use code points stand for fuzzy syllables in the sound-alike form.
static SYLLABLE_SYMBOLS: LazyLock<Mutex<HashMap<String, char>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn symbol_for(syllable: String) -> char {
    let mut table = SYLLABLE_SYMBOLS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let next = 0xE000 + table.len() as u32;
    *table
        .entry(syllable)
        .or_insert_with(|| char::from_u32(next).unwrap_or('\u{E000}'))
}

/// The sound-alike form: every Chinese character replaced by the symbol of its fuzzy
/// syllable; other characters kept. Applied to both texts and rule patterns, so 针凡 and
/// 真烦, or 挂 and 瓜, compare equal.
pub fn sound_alike(text: &str) -> String {
    text.chars()
        .map(|c| fuzzy_syllable(c).map(symbol_for).unwrap_or(c))
        .collect()
}

/// Character error rate of `hypothesis` against `reference` after normalization
/// (Levenshtein distance over characters divided by the reference length).
pub fn char_errors(reference: &str, hypothesis: &str) -> (usize, usize) {
    let r: Vec<char> = normalize(reference).chars().collect();
    let h: Vec<char> = normalize(hypothesis).chars().collect();
    let mut previous: Vec<usize> = (0..=h.len()).collect();
    let mut current = vec![0; h.len() + 1];
    for (i, rc) in r.iter().enumerate() {
        current[0] = i + 1;
        for (j, hc) in h.iter().enumerate() {
            let substitution = previous[j] + usize::from(rc != hc);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    (previous[h.len()], r.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_simplifies_and_strips_punctuation() {
        assert_eq!(normalize("喂，是我。  什麼事？"), "喂是我什么事");
        assert_eq!(normalize("別再打電話了！"), "别再打电话了");
        assert_eq!(normalize("ＯＫ，好的"), "ok好的");
    }

    #[test]
    fn sound_alike_merges_recognition_slips() {
        assert_eq!(sound_alike("真烦"), sound_alike("针凡"));
        assert_eq!(sound_alike("挂了"), sound_alike("瓜了"));
        assert_eq!(sound_alike("是"), sound_alike("四"));
        assert_eq!(sound_alike("续"), sound_alike("需"));
        assert_ne!(sound_alike("续费"), sound_alike("不会"));
    }

    #[test]
    fn character_error_rate_counts_edits() {
        assert_eq!(char_errors("嗯，是我", "嗯是我"), (0, 3));
        assert_eq!(char_errors("不续了", "不需了"), (1, 3));
        assert_eq!(char_errors("好", ""), (1, 1));
        assert_eq!(char_errors("", "多余"), (2, 0));
    }
}
