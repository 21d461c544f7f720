//! Intent rules: `script/intents.toml` loaded into regular expressions that label one
//! callee utterance, tolerant of recognition slips through the sound-alike text form,
//! clause-by-clause short answers and one misheard character in long phrases.

use crate::labels::Intent;
use crate::phonetic::{self, Confusions};
use crate::text;
use regex::Regex;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Characters that carry no meaning at the edges of a short answer.
const FILLERS: &[char] = &[
    '嗯', '呃', '啊', '哦', '喂', '哎', '唉', '诶', '额', '噢', '呀', '吧', '呢', '啦',
];

/// A problem in a rules file, with the place to fix it.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read intent rules {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error(transparent)]
    Confusions(#[from] phonetic::ConfusionsError),
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

#[derive(Deserialize)]
struct RulesFile {
    report_order: Vec<toml::Spanned<String>>,
    /// Named word lists (`neg = "别|不要|甭"`), written `{neg}` inside patterns.
    #[serde(default)]
    concepts: std::collections::BTreeMap<String, toml::Spanned<String>>,
    #[serde(default)]
    short_answers: Vec<toml::Spanned<String>>,
    intent: Vec<RuleEntry>,
}

#[derive(Deserialize)]
struct RuleEntry {
    label: toml::Spanned<String>,
    #[serde(rename = "match")]
    patterns: Vec<toml::Spanned<String>>,
    #[serde(default)]
    unless: Vec<toml::Spanned<String>>,
    #[serde(default)]
    clause_unless: Vec<toml::Spanned<String>>,
}

/// Phrases at least this long (characters) still match with one inner character misheard.
const FUZZY_MIN_CHARS: usize = 5;

/// A regular expression tried on the text and on its sound-alike form.
#[derive(Debug)]
struct Pattern {
    source: String,
    exact: Regex,
    sound_alike: Regex,
    /// For a pattern that spells out a finite set of phrases, those of them long enough
    /// with any one inner character free (不打算用了 also matches 不打涉用了); tried only
    /// when no rule matches the utterance exactly.
    one_slip: Option<Regex>,
    /// The syllables of those phrases with at least `phonetic::MIN_PHRASE_SYLLABLES`, for
    /// matching with measured syllable confusions (tried with `one_slip`).
    phrases: Vec<Vec<String>>,
}

impl Pattern {
    fn compile(source: &str) -> Result<Pattern, regex::Error> {
        let literals = literal_phrases(source).unwrap_or_default();
        let phrases = literals
            .iter()
            .filter_map(|p| phonetic::phrase_syllables(p))
            .filter(|p| p.len() >= phonetic::MIN_PHRASE_SYLLABLES)
            .collect();
        Ok(Pattern {
            source: source.to_string(),
            exact: Regex::new(source)?,
            sound_alike: Regex::new(&text::sound_alike(source))?,
            one_slip: one_slip_variants(&literals)?,
            phrases,
        })
    }

    /// Whether a phrase of the pattern is heard with measured syllable slips.
    fn is_match_phonetically(&self, forms: &[Form], confusions: &Confusions) -> bool {
        !self.phrases.is_empty()
            && forms.iter().any(|(plain, _)| {
                let heard = phonetic::syllables(plain);
                self.phrases.iter().any(|p| confusions.holds(&heard, p))
            })
    }

    fn is_match(&self, forms: &[Form]) -> bool {
        forms
            .iter()
            .any(|(plain, alike)| self.exact.is_match(plain) || self.sound_alike.is_match(alike))
    }

    fn is_match_with_one_slip(&self, forms: &[Form]) -> bool {
        self.one_slip
            .as_ref()
            .is_some_and(|re| forms.iter().any(|(plain, _)| re.is_match(plain)))
    }
}

/// The phrases `source` spells out when it denotes a finite set of plain strings
/// (alternations and optional groups; no anchors, classes or repetition).
fn literal_phrases(source: &str) -> Option<Vec<String>> {
    use regex_syntax::hir::literal::Extractor;
    if source.contains(['^', '$', '.', '*', '+', '[', '{', '\\']) {
        return None;
    }
    let hir = regex_syntax::parse(source).ok()?;
    let phrases = Extractor::new().extract(&hir);
    let literals = phrases.literals().filter(|_| phrases.is_exact())?;
    Some(
        literals
            .iter()
            .filter_map(|l| std::str::from_utf8(l.as_bytes()).ok())
            .map(str::to_string)
            .collect(),
    )
}

/// The phrases of `source` when it denotes a finite set of plain strings, with each phrase of at least
/// `FUZZY_MIN_CHARS` characters turned into its variants with one inner character free.
#[cfg(test)]
fn one_slip_regex(source: &str) -> Result<Option<Regex>, regex::Error> {
    one_slip_variants(&literal_phrases(source).unwrap_or_default())
}

/// The phrases of a pattern (`literal_phrases`) of at least `FUZZY_MIN_CHARS` characters,
/// each with any one inner character free, as one regex; `None` when there are none.
fn one_slip_variants(phrases: &[String]) -> Result<Option<Regex>, regex::Error> {
    let mut variants = Vec::new();
    for phrase in phrases {
        let chars: Vec<char> = phrase.chars().collect();
        if chars.len() < FUZZY_MIN_CHARS {
            continue;
        }
        for free in 1..chars.len() - 1 {
            let variant: String = chars
                .iter()
                .enumerate()
                .map(|(at, &c)| {
                    if at == free {
                        ".".to_string()
                    } else {
                        regex::escape(&c.to_string())
                    }
                })
                .collect();
            variants.push(variant);
        }
    }
    if variants.is_empty() {
        return Ok(None);
    }
    Regex::new(&variants.join("|")).map(Some)
}

/// `source` with every `{name}` of a concept replaced by its words as a group; the name of
/// an unknown concept as the error. Regex repetitions (`{0,4}`) are left alone.
fn expand_concepts(source: &str, concepts: &[(String, String)]) -> Result<String, String> {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return Ok(out);
        };
        let name = &after[..close];
        if name.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !name.is_empty() {
            let words = concepts
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, w)| w)
                .ok_or_else(|| name.to_string())?;
            out.push_str("(?:");
            out.push_str(words);
            out.push(')');
        } else {
            out.push_str(&rest[open..open + 1 + close + 1]);
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[derive(Debug)]
struct Rule {
    label: Intent,
    /// Each pattern with its optional guard (`A !! B`: A counts only without B).
    patterns: Vec<(Pattern, Option<Pattern>)>,
    /// Vetoes for the whole utterance.
    unless: Vec<Pattern>,
    /// Vetoes for the clause they occur in.
    clause_unless: Vec<Pattern>,
}

/// A normalized text and its sound-alike form.
type Form = (String, String);

/// The forms of one utterance that patterns are tried on.
struct Utterance {
    normalized: String,
    /// The whole utterance, and without fillers at its ends.
    whole: Vec<Form>,
    /// `whole`, plus each clause of a several-clause utterance (可以可以，说吧 → 可以可以,
    /// 说吧) the same way, so that patterns describing a whole short answer find it inside a
    /// longer reply. Only for labels that do not decide the outcome: a clause such as 不是
    /// opens many sentences that are no denial.
    with_clauses: Vec<Form>,
    /// Each clause of a several-clause utterance on its own (empty for one clause), so a
    /// veto is judged in the clause it belongs to: 短信别发了，也别再打电话了 asks for both.
    clauses: Vec<Vec<Form>>,
}

/// Cantonese function words as callees write or whisper transcribes them, with their
/// Mandarin equivalents, so the rules (written in Mandarin) read 唔使 as 不用 and 冇兴趣 as
/// 没兴趣. Only words that mean nothing else in Mandarin text: 系 (是) is left alone, since
/// it also writes 系统.
/// Replaced in this order, so a word comes before the single character it starts with
/// (唔使 before 唔).
const CANTONESE_WORDS: &[(&str, &str)] = &[
    ("唔使", "不用"),
    ("唔好", "不要"),
    ("喺度", "在"),
    ("唔该", "谢谢"),
    ("乜嘢", "什么"),
    ("咩嘢", "什么"),
    ("边个", "谁"),
    ("边位", "哪位"),
    ("几时", "什么时候"),
    ("收线", "挂了"),
    ("唔", "不"),
    ("喺", "在"),
    ("嚟", "来"),
    ("咗", "了"),
    ("睇", "看"),
    ("畀", "给"),
    ("冇", "没"),
    ("咩", "什么"),
    ("嘅", "的"),
    ("佢", "他"),
    ("啲", "些"),
    ("点样", "怎么"),
    ("即刻", "马上"),
    ("做咩", "做什么"),
];

/// Words of other regions, and English words callees mix in, with their Mandarin
/// equivalents, read the same way as `CANTONESE_WORDS` (after them, in this order):
/// Shanghainese (覅 = 不要, 侬 = 你, 阿拉 = 我们, 伊 = 他, 自家 = 自己, 哪能 = 怎么),
/// northern (嘎哈 = 干啥, 撂 = 挂 the phone, 嗯呐 = 嗯), southwestern (莫 = 别).
const REGIONAL_WORDS: &[(&str, &str)] = &[
    ("覅", "不要"),
    ("侬拉", "你们"),
    ("侬", "你"),
    ("阿拉", "我们"),
    ("伊拉", "他们"),
    ("伊", "他"),
    ("自家", "自己"),
    ("哪能", "怎么"),
    ("啥事体", "啥事"),
    ("勿", "不"),
    ("寻", "找"),
    ("挂脱", "挂掉"),
    ("嘎哈", "干啥"),
    ("干哈", "干啥"),
    ("啥玩意", "什么"),
    ("撂", "挂"),
    ("伐要", "不要"),
    ("伐用", "不用"),
    ("系我", "是我"),
    ("不系", "不是"),
    ("系咪", "是不是"),
    ("系啊", "是啊"),
    ("系呀", "是呀"),
    ("没得", "没有"),
    ("嗯呐", "嗯"),
    ("嗯哪", "嗯"),
    ("莫得", "没有"),
    ("莫", "别"),
    ("cancel", "取消"),
    ("account", "账户"),
    ("delete", "删除"),
    ("email", "邮件"),
    ("sorry", "不好意思"),
    // Office English mixed into Mandarin (回头在app上自己renew一下).
    ("renew", "续费"),
    ("wrongnumber", "打错了"),
    ("message", "短信"),
    ("sms", "短信"),
    ("console", "控制台"),
    ("okay", "好"),
    ("ok", "好"),
    // Shanghainese 伐 before a verb negates (伐续了 = 不续了); at the end it asks (好伐).
    ("伐续", "不续"),
    ("伐打", "不打"),
    ("伐想", "不想"),
    ("伐需要", "不需要"),
    ("伐来", "不来"),
    ("伐是", "不是"),
];

/// Words where 儿 is a word of its own, not the northern 儿 ending (事儿, 这儿, 玩意儿).
const REAL_ER: &[&str] = &[
    "儿子", "女儿", "婴儿", "儿童", "孤儿", "幼儿", "健儿", "胎儿", "混儿",
];

/// Drops the northern 儿 ending (事儿 → 事, 一会儿 → 一会), so rules need not spell it.
fn without_erhua(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    for (at, &c) in chars.iter().enumerate() {
        if c == '儿' && at > 0 {
            let before: String = chars[at - 1..=at].iter().collect();
            let after: String = chars[at..(at + 2).min(chars.len())].iter().collect();
            if !REAL_ER.contains(&before.as_str()) && !REAL_ER.contains(&after.as_str()) {
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Phrases with which a callee takes back what he just said (不续——哦不对，续的): only
/// what follows the last of them counts.
const CORRECTIONS: &[&str] = &[
    "哦不对",
    "啊不对",
    "哎不对",
    "诶不对",
    "欸不对",
    "哎呀不对",
    "我搞错了",
    "呃不对",
    "噢不对",
    "不对不对",
    "说错了",
    "我是说",
    "更正一下",
    "不不不",
];

/// What is left of `normalized` after the callee's last correction, if anything.
fn after_correction(normalized: &str) -> &str {
    let cut = CORRECTIONS
        .iter()
        .filter_map(|c| normalized.rfind(c).map(|at| at + c.len()))
        .max();
    match cut {
        Some(at) if normalized[at..].chars().count() >= 2 => &normalized[at..],
        _ => normalized,
    }
}

/// `normalized` with Cantonese function words in their Mandarin form.
fn as_mandarin(normalized: &str) -> String {
    let mandarin = CANTONESE_WORDS
        .iter()
        .chain(REGIONAL_WORDS)
        .fold(normalized.to_string(), |text, (regional, mandarin)| {
            text.replace(regional, mandarin)
        });
    without_erhua(&mandarin)
}

impl Utterance {
    fn new(raw: &str) -> Utterance {
        let normalized = text::normalize(raw);
        // After a correction (不续——哦不对，续的) only the rest is what he means.
        let corrected = after_correction(&normalized);
        let meant = if corrected.len() < normalized.len() {
            corrected
        } else {
            raw
        };
        let whole = Self::forms(&as_mandarin(&text::normalize(meant)));
        let mut with_clauses = whole.clone();
        let mut clause_forms = Vec::new();
        let clauses: Vec<String> = meant
            .split(|c: char| !c.is_alphanumeric() && !c.is_whitespace())
            .map(|clause| as_mandarin(&text::normalize(clause)))
            .filter(|c| !c.is_empty())
            .collect();
        if clauses.len() > 1 {
            // A clause that is all filler (喂，…) says nothing on its own.
            for clause in &clauses {
                let core = clause.trim_matches(FILLERS);
                if !core.is_empty() {
                    with_clauses.push((core.to_string(), text::sound_alike(core)));
                }
                clause_forms.push(Self::forms(clause));
            }
        }
        Utterance {
            normalized,
            whole,
            with_clauses,
            clauses: clause_forms,
        }
    }

    fn forms_for(&self, label: Intent) -> &[Form] {
        if label.is_decisive() {
            &self.whole
        } else {
            &self.with_clauses
        }
    }

    fn forms(normalized: &str) -> Vec<Form> {
        let mut forms = vec![(normalized.to_string(), text::sound_alike(normalized))];
        let core = normalized.trim_matches(FILLERS);
        if !core.is_empty() && core != normalized {
            forms.push((core.to_string(), text::sound_alike(core)));
        }
        forms
    }
}

/// The loaded rule set.
#[derive(Debug)]
pub struct IntentRules {
    rules: Vec<Rule>,
    report_order: Vec<Intent>,
    /// Syllable pairs the recognizer confuses (`confusions.toml` beside the rules).
    confusions: Confusions,
    /// Brief replies callees commonly give, each understood by these rules; recognition
    /// checks short utterances against them (`asr::ShortAnswers`).
    pub short_answers: Vec<String>,
}

/// The labels of one utterance, strongest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub normalized: String,
    pub intents: Vec<Intent>,
}

impl Classification {
    /// The label reported for the turn.
    pub fn primary(&self) -> Intent {
        self.intents.first().copied().unwrap_or(Intent::Unknown)
    }

    pub fn has(&self, intent: Intent) -> bool {
        self.intents.contains(&intent)
    }
}

impl IntentRules {
    pub fn load(path: &Path) -> Result<IntentRules, RulesError> {
        let source = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
            path: path.into(),
            source,
        })?;
        let mut rules = Self::parse(&source, path)?;
        rules.confusions = Confusions::load(&path.with_file_name("confusions.toml"))?;
        Ok(rules)
    }

    /// Parses rules from `source`; `path` is only used in error messages.
    pub fn parse(source: &str, path: &Path) -> Result<IntentRules, RulesError> {
        let file: RulesFile = toml::from_str(source).map_err(|source| RulesError::Parse {
            path: path.into(),
            source,
        })?;
        let invalid = |span: std::ops::Range<usize>, message: String| RulesError::Invalid {
            path: path.into(),
            line: source[..span.start.min(source.len())].matches('\n').count() + 1,
            message,
        };
        let label = |spanned: &toml::Spanned<String>| -> Result<Intent, RulesError> {
            spanned
                .get_ref()
                .parse::<Intent>()
                .map_err(|e| invalid(spanned.span(), e.to_string()))
        };
        let mut concepts: Vec<(String, String)> = Vec::new();
        for (name, words) in &file.concepts {
            let expanded = expand_concepts(words.get_ref(), &concepts)
                .map_err(|unknown| invalid(words.span(), format!("unknown concept `{{{unknown}}}` (concepts may use only those defined before them, alphabetically)")))?;
            concepts.push((name.clone(), expanded));
        }
        let compile =
            |spanned: &toml::Spanned<String>, source: &str| -> Result<Pattern, RulesError> {
                let expanded = expand_concepts(source.trim(), &concepts).map_err(|unknown| {
                    invalid(spanned.span(), format!("unknown concept `{{{unknown}}}`"))
                })?;
                Pattern::compile(&expanded).map_err(|e| {
                    invalid(
                        spanned.span(),
                        format!("bad pattern `{}`: {e}", source.trim()),
                    )
                })
            };

        let mut rules = Vec::new();
        for entry in &file.intent {
            let intent = label(&entry.label)?;
            if intent == Intent::Unknown {
                return Err(invalid(
                    entry.label.span(),
                    "`unknown` is what no rule matches; it takes no rules".into(),
                ));
            }
            if rules.iter().any(|r: &Rule| r.label == intent) {
                return Err(invalid(
                    entry.label.span(),
                    format!("`{intent}` has rules twice; merge them"),
                ));
            }
            if entry.patterns.is_empty() {
                return Err(invalid(
                    entry.label.span(),
                    format!("`{intent}` has no patterns"),
                ));
            }
            let mut patterns = Vec::new();
            for spanned in &entry.patterns {
                let (positive, guard) = match spanned.get_ref().split_once("!!") {
                    Some((positive, guard)) => (positive, Some(compile(spanned, guard)?)),
                    None => (spanned.get_ref().as_str(), None),
                };
                patterns.push((compile(spanned, positive)?, guard));
            }
            let unless = entry
                .unless
                .iter()
                .map(|s| compile(s, s.get_ref()))
                .collect::<Result<_, _>>()?;
            let clause_unless = entry
                .clause_unless
                .iter()
                .map(|s| compile(s, s.get_ref()))
                .collect::<Result<_, _>>()?;
            rules.push(Rule {
                label: intent,
                patterns,
                unless,
                clause_unless,
            });
        }
        let report_order = file
            .report_order
            .iter()
            .map(label)
            .collect::<Result<Vec<_>, _>>()?;
        for rule in &rules {
            if !rule.label.is_decisive() && !report_order.contains(&rule.label) {
                return Err(invalid(
                    file.report_order.first().map(|s| s.span()).unwrap_or(0..0),
                    format!("`{}` is missing from report_order", rule.label),
                ));
            }
        }
        let mut loaded = IntentRules {
            rules,
            report_order,
            confusions: Confusions::default(),
            short_answers: Vec::new(),
        };
        for spanned in &file.short_answers {
            let answer = spanned.get_ref().trim();
            if loaded.classify(answer).primary() == Intent::Unknown {
                return Err(invalid(
                    spanned.span(),
                    format!("short answer `{answer}` matches no rule; add a pattern or drop it"),
                ));
            }
            loaded.short_answers.push(answer.to_string());
        }
        Ok(loaded)
    }

    /// Labels one utterance. Decisive labels come first, by the outcome precedence of
    /// `scenario.md`; then the others in `report_order`; `unknown` when nothing matched.
    pub fn classify(&self, raw: &str) -> Classification {
        let utterance = Utterance::new(raw);
        let normalized = utterance.normalized.clone();
        let mut found: Vec<Intent> = Vec::new();
        if !normalized.is_empty() {
            found = self.labels(&utterance, Pattern::is_match);
            if found.is_empty() {
                found = self.labels(&utterance, |pattern, forms| {
                    pattern.is_match_with_one_slip(forms)
                        || pattern.is_match_phonetically(forms, &self.confusions)
                });
            }
        }
        let mut intents: Vec<Intent> = Intent::DECISIVE_BY_PRECEDENCE
            .iter()
            .copied()
            .filter(|i| found.contains(i))
            .collect();
        let decisive = !intents.is_empty();
        for &intent in &self.report_order {
            // A backchannel or a "yes" next to a real answer is just its lead-in.
            let filler = matches!(
                intent,
                Intent::Acknowledge | Intent::ConfirmIdentity | Intent::AskRepeat
            );
            if found.contains(&intent) && !(decisive && filler) {
                intents.push(intent);
            }
        }
        if intents.len() > 1 {
            // "嗯，是我，什么事" is an identity answer, not a backchannel.
            intents.retain(|&i| i != Intent::Acknowledge);
        }
        if intents.is_empty() {
            intents.push(Intent::Unknown);
        }
        Classification {
            normalized,
            intents,
        }
    }

    /// The labels whose rules fire on `utterance`, with patterns matched by `matches`
    /// (guards and `unless` always as written).
    fn labels(
        &self,
        utterance: &Utterance,
        matches: impl Fn(&Pattern, &[Form]) -> bool,
    ) -> Vec<Intent> {
        let mut found = Vec::new();
        for rule in &self.rules {
            let forms = utterance.forms_for(rule.label);
            let fires_in = |forms: &[Form]| {
                rule.patterns.iter().any(|(pattern, guard)| {
                    matches(pattern, forms) && !guard.as_ref().is_some_and(|g| g.is_match(forms))
                })
            };
            let clause_vetoed =
                |forms: &[Form]| rule.clause_unless.iter().any(|u| u.is_match(forms));
            let fires = fires_in(forms)
                && !rule.unless.iter().any(|u| u.is_match(&utterance.whole))
                // A clause veto stands only if no clause says the label on its own, free of
                // it (别发短信了，电话也别打了 asks for both).
                && (!clause_vetoed(&utterance.whole)
                    || utterance
                        .clauses
                        .iter()
                        .any(|clause| fires_in(clause) && !clause_vetoed(clause)));
            if fires {
                found.push(rule.label);
            }
        }
        found
    }

    /// Which patterns of which labels match `raw` (for `renewal-bot classify`, when
    /// tuning the rules): `(label, pattern, vetoed by unless/guard)`.
    pub fn explain(&self, raw: &str) -> Vec<(Intent, String, bool)> {
        let utterance = Utterance::new(raw);
        let exact = self.hits(&utterance, Pattern::is_match, "");
        // As in `classify`: the one-slip forms count only when no rule fires exactly.
        if exact.iter().any(|(_, _, vetoed)| !vetoed) {
            return exact;
        }
        let slipped = self.hits(
            &utterance,
            Pattern::is_match_with_one_slip,
            " (one character misheard)",
        );
        let misheard = self.hits(
            &utterance,
            |pattern, forms| pattern.is_match_phonetically(forms, &self.confusions),
            " (syllables misheard)",
        );
        exact.into_iter().chain(slipped).chain(misheard).collect()
    }

    fn hits(
        &self,
        utterance: &Utterance,
        matches: impl Fn(&Pattern, &[Form]) -> bool,
        note: &str,
    ) -> Vec<(Intent, String, bool)> {
        let mut hits = Vec::new();
        for rule in &self.rules {
            let forms = utterance.forms_for(rule.label);
            let vetoed_by_unless = rule.unless.iter().any(|u| u.is_match(&utterance.whole))
                || rule
                    .clause_unless
                    .iter()
                    .any(|u| u.is_match(&utterance.whole));
            for (pattern, guard) in &rule.patterns {
                if matches(pattern, forms) {
                    let guarded = guard.as_ref().is_some_and(|g| g.is_match(forms));
                    hits.push((
                        rule.label,
                        format!("{}{note}", pattern.source),
                        vetoed_by_unless || guarded,
                    ));
                }
            }
        }
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Intent::*;

    fn rules() -> IntentRules {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("script/intents.toml");
        IntentRules::load(&path).expect("script/intents.toml loads")
    }

    #[track_caller]
    fn check(rules: &IntentRules, text: &str, expected: Intent) {
        let got = rules.classify(text);
        assert_eq!(got.primary(), expected, "{text:?} gave {:?}", got.intents);
    }

    #[test]
    fn sound_alike_collisions_do_not_invent_labels() {
        let rules = rules();
        // 那到 sounds like 拉倒, 打电 like 大点, 那些 like 写, 这种电 like 重点.
        check(&rules, "那到期就续一年吧", WillRenew);
        check(&rules, "你们干嘛年年都打电话推销啊", AskWhyCall);
        check(&rules, "那些邮件推送我也不想收了，都停掉吧", StopMessages);
        check(&rules, "我想知道这种电话到底是谁让你们打的", AskWhyCall);
        check(&rules, "什么？最后那句再说一遍", AskRepeat);
        check(&rules, "我那些数据你们会不会拿去乱用", AskDataHandling);
    }

    #[test]
    fn misheard_endings_still_count() {
        let rules = rules();
        check(&rules, "听你们说话就头疼不说了怪了", HostileHangup);
        check(&rules, "以为这公司真够烦人的别说了五话了", HostileHangup);
        check(&rules, "不打算是这个平台我们没怎么用", Decline);
        check(&rules, "这也太奇怪了", Unknown);
        check(&rules, "张强换部门了，这个号现在是我在用", WrongPerson);
    }

    #[test]
    fn scenario_examples_get_their_labels() {
        let r = rules();
        let table: &[(&str, Intent)] = &[
            ("是我", ConfirmIdentity),
            ("对", ConfirmIdentity),
            ("你说", ConfirmIdentity),
            ("什么事", ConfirmIdentity),
            ("不是", WrongPerson),
            ("打错了", WrongPerson),
            ("他不在", WrongPerson),
            ("有事直说，我赶时间", Busy),
            ("快点说重点", Busy),
            ("没空", Busy),
            ("我这挺吵的，你快点", Busy),
            ("会续的", WillRenew),
            ("续吧", WillRenew),
            ("要续费", WillRenew),
            ("续费有就自己弄，不用联系我", SelfService),
            ("我自己后台处理", SelfService),
            ("不续了", Decline),
            ("不用了，什么都不需要", Decline),
            ("没兴趣，随便吧", Decline),
            ("不是说过别打了吗", DoNotCall),
            ("以后别联系了", DoNotCall),
            ("电话别再来了", DoNotCall),
            ("只要有通知短信就行", WrittenOnly),
            ("发邮件给我", WrittenOnly),
            ("发短信吧", WrittenOnly),
            ("以后还会打这种电话吗", AskCallAgain),
            ("你们公司为什么每年都要打推销", AskWhyCall),
            ("怎么能马上关闭账户、处理数据", AskCloseAccount),
            ("你们要把我的信息怎么处理", AskDataHandling),
            ("你们别再给我发消息了可以吗", StopMessages),
            ("你们公司这样很烦，挂了", HostileHangup),
            ("我要挂了", HostileHangup),
            ("别浪费我时间", HostileHangup),
            ("嗯", Acknowledge),
            ("好", Acknowledge),
            ("知道了", Acknowledge),
            ("行", Acknowledge),
            ("什么？", AskRepeat),
            ("你说啥", AskRepeat),
            ("没听清", AskRepeat),
            ("今天天气不错", Unknown),
        ];
        for &(text, intent) in table {
            check(&r, text, intent);
        }
    }

    #[test]
    fn precedence_follows_the_scenario() {
        let r = rules();
        check(&r, "不续了，以后别打了", DoNotCall);
        check(&r, "发短信就行，别打电话", WrittenOnly);
        let both = r.classify("只要短信就行，电话别再来了");
        assert!(both.has(WrittenOnly) && both.has(DoNotCall), "{both:?}");
    }

    #[test]
    fn recognition_slips_and_traditional_characters_still_match() {
        let r = rules();
        check(&r, "有事直說，我改時間", Busy);
        check(&r, "不是說過別打了嗎？針凡", DoNotCall);
        check(&r, "我要瓜了", HostileHangup);
        check(&r, "不需了", Decline);
    }

    #[test]
    fn a_short_answer_inside_a_longer_reply_is_found_clause_by_clause() {
        let r = rules();
        check(&r, "好好，你说吧", ConfirmIdentity);
        check(&r, "喂，是我。", ConfirmIdentity);
        // Clauses never decide the outcome: 不是 here opens a complaint.
        let opened = r.classify("不是，你们怎么又打来了");
        assert!(!opened.has(WrongPerson), "{opened:?}");
    }

    #[test]
    fn a_long_phrase_survives_one_misheard_character() {
        let r = rules();
        check(&r, "这个服务我们不打涉用了", Decline);
        // `explain` says which phrase matched, and that it took a slip.
        assert!(
            r.explain("这个服务我们不打涉用了")
                .iter()
                .any(|(label, source, vetoed)| *label == Decline
                    && source.ends_with("(one character misheard)")
                    && !vetoed)
        );
        // The first and last characters get no such leeway.
        assert_eq!(r.classify("这个服务我们甩打算用了").primary(), Unknown);
    }

    #[test]
    fn one_slip_variants_cover_only_finite_plain_phrases() {
        let re = one_slip_regex("不(再|想)?继续用").unwrap().unwrap();
        assert!(re.is_match("不想继x用"));
        assert!(re.is_match("不再x续用"));
        assert!(!re.is_match("x想继续用"));
        assert!(!re.is_match("不想继续甩"));
        // 不继续用 has four characters: exact only.
        assert!(!re.is_match("不继x用"));
        assert!(one_slip_regex("^不用了$").unwrap().is_none());
        assert!(one_slip_regex("随便.{0,3}吧").unwrap().is_none());
        assert!(one_slip_regex("不用").unwrap().is_none());
    }

    #[test]
    fn cantonese_function_words_read_as_mandarin() {
        let rules = rules();
        check(&rules, "唔使续啦，冇兴趣", Decline);
        check(&rules, "你系边个啊？", ConfirmIdentity);
        check(&rules, "咩话？", AskRepeat);
        check(&rules, "唔好再打嚟啦", DoNotCall);
        check(&rules, "佢唔喺度", WrongPerson);
        // 系统 keeps its meaning: 系 is not rewritten.
        check(&rules, "我自己上系统续就得", SelfService);
        assert_eq!(as_mandarin("唔使"), "不用");
    }

    #[test]
    fn regional_words_corrections_and_erhua_read_as_plain_mandarin() {
        let r = rules();
        check(&r, "覅续了，阿拉公司勿用了", Decline);
        check(&r, "伊勿在，侬寻错人了", WrongPerson);
        check(&r, "侬烦伐啦，挂脱了", HostileHangup);
        check(&r, "不续——哦不对，续，续的，我自己去交", SelfService);
        assert_eq!(without_erhua("有事儿说事儿"), "有事说事");
        assert_eq!(without_erhua("我女儿接的"), "我女儿接的");
        assert_eq!(after_correction("续不对不对不续了"), "不续了");
        assert_eq!(after_correction("不续了"), "不续了");
    }

    #[test]
    fn concepts_expand_inside_patterns() {
        let concepts = vec![
            ("neg".to_string(), "别|不要".to_string()),
            ("call".to_string(), "打|联系".to_string()),
        ];
        assert_eq!(
            expand_concepts("{neg}再{call}.{0,4}了", &concepts).unwrap(),
            "(?:别|不要)再(?:打|联系).{0,4}了"
        );
        assert_eq!(expand_concepts("{nope}", &concepts).unwrap_err(), "nope");
        let rules = IntentRules::parse(
            "report_order = []\n[concepts]\nneg = \"别|甭\"\n[[intent]]\nlabel = \"do_not_call\"\nmatch = [\"{neg}打\"]\n",
            Path::new("rules.toml"),
        )
        .unwrap();
        assert_eq!(rules.classify("甭打了").primary(), DoNotCall);
        let err = IntentRules::parse(
            "report_order = []\n[[intent]]\nlabel = \"do_not_call\"\nmatch = [\"{neg}打\"]\n",
            Path::new("rules.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("rules.toml:4:") && err.contains("neg"),
            "{err}"
        );
    }

    #[test]
    fn turning_down_help_is_handling_it_himself() {
        let r = rules();
        for text in [
            "不用你们提醒，到时候我自己弄",
            "不需要你们帮忙，后台我自己点",
            "这事不用你们插手",
            "别操这个心了，我自己来",
        ] {
            check(&r, text, SelfService);
        }
        // Refusing the renewal in its own clause still declines.
        check(&r, "不用你们提醒了，这个不续了", Decline);
    }

    #[test]
    fn a_veto_counts_only_in_its_own_clause() {
        let r = rules();
        let both = r.classify("短信你们也别发了，电话也不要再打过来了");
        assert!(both.has(StopMessages) && both.has(DoNotCall), "{both:?}");
        assert_eq!(both.primary(), DoNotCall);
        // One clause about messages alone stays a messages request.
        check(&r, "以后别再给我发那些推广短信了", StopMessages);
        let written = r.classify("别再推广告了，真有事发邮件");
        assert!(written.has(WrittenOnly), "{written:?}");
    }

    #[test]
    fn negations_do_not_flip_meaning() {
        let r = rules();
        check(&r, "不会续的", Decline);
        check(&r, "不打算续费了", Decline);
        check(&r, "别再给我发短信了", StopMessages);
        check(&r, "不是跟你们说了吗，不要再打了", DoNotCall);
    }

    #[test]
    fn a_short_answer_no_rule_understands_is_rejected_with_its_line() {
        let err = IntentRules::parse(
            "report_order = [\"acknowledge\"]\nshort_answers = [\n  \"好的\",\n  \"西瓜\",\n]\n[[intent]]\nlabel = \"acknowledge\"\nmatch = [\"好\"]\n",
            Path::new("rules.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("rules.toml:4:") && err.contains("西瓜"),
            "{err}"
        );
    }

    #[test]
    fn bad_rule_files_name_the_line() {
        let err = IntentRules::parse(
            "report_order = []\n[[intent]]\nlabel = \"maybe_later\"\nmatch = [\"x\"]\n",
            Path::new("rules.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("rules.toml:3:") && err.contains("maybe_later"),
            "{err}"
        );

        let err = IntentRules::parse(
            "report_order = [\"busy\"]\n[[intent]]\nlabel = \"busy\"\nmatch = [\n  \"(unclosed\",\n]\n",
            Path::new("rules.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("rules.toml:5:") && err.contains("bad pattern"),
            "{err}"
        );
    }
}
