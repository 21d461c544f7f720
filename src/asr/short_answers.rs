//! Short-reply verification: whisper's own decoder scores a list of replies callees commonly
//! give (是我, 好的, 不续了…) against the utterance it has just encoded, so a one-word answer
//! that free decoding garbles (嗯行吧 → 你醒吧) can still be read as the reply the audio fits.
//!
//! The encoder output of the first pass is reused; each answer costs one decoder step per
//! token, shared between answers with a common beginning (a token trie walked depth first)
//! and skipped as soon as its beginning is already too unlikely to win. The same encoder
//! output can also be read again greedily with only a neutral prompt, to check a short reply
//! the domain prompt may have put words into.

use whisper_rs::{WhisperContext, WhisperState, WhisperTokenId};

/// The part of the recognizer's prompt that only sets the language and register.
const NEUTRAL_PROMPT: &str = "以下是普通话的电话对话。";

/// Whisper's token for a lone space, never a transcript's first token.
const BLANK: usize = 220;

/// A reply to listen for, and how much less likely than whisper's own transcript it may be
/// and still be taken (log probability; 0 means it must fit the audio better).
#[derive(Debug, Clone, PartialEq)]
pub struct ShortAnswer {
    pub text: String,
    pub margin: f32,
    /// Whether reading it would decide the call (不续了, 别打了). A harmless answer is never
    /// taken when a deciding one fits the audio better: a garbled 别打了 must not become 好的.
    pub decisive: bool,
}

/// An answer's tokens as whisper writes them.
#[derive(Debug, Clone)]
struct Tokenized {
    answer: usize,
    /// The answer's spoken characters.
    spoken: usize,
}

/// Spoken characters (punctuation and spaces do not count).
fn spoken_len(text: &str) -> usize {
    text.chars().filter(|c| c.is_alphanumeric()).count()
}

/// The answers, tokenized once for the loaded model.
#[derive(Debug, Clone)]
pub struct ShortAnswers {
    /// What whisper's decoder sees before the transcript: previous-text marker, the prompt,
    /// start of transcript, language, task, no timestamps (as `whisper_full` builds it).
    prefix: Vec<WhisperTokenId>,
    /// The same with only the neutral first sentence of the prompt.
    neutral_prefix: Vec<WhisperTokenId>,
    end_of_text: WhisperTokenId,
    answers: Vec<ShortAnswer>,
    tokenized: Vec<Tokenized>,
    /// Every tokenized answer, by its tokens; `ends` index `tokenized`.
    trie: TrieNode,
    widest_margin: f32,
}

/// The answer that fits best, with the log probability of its tokens and the end of text.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    pub text: String,
    pub log_prob: f32,
}

#[derive(Debug, Clone, Default)]
struct TrieNode {
    token: WhisperTokenId,
    children: Vec<TrieNode>,
    /// Indices (into the candidate list) of texts that end at this node.
    ends: Vec<usize>,
    /// The most spoken characters of any text ending at or below this node.
    longest: usize,
}

impl TrieNode {
    fn insert(&mut self, tokens: &[WhisperTokenId], index: usize, spoken: usize) {
        self.longest = self.longest.max(spoken);
        let Some((&first, rest)) = tokens.split_first() else {
            self.ends.push(index);
            return;
        };
        let child = match self.children.iter().position(|c| c.token == first) {
            Some(at) => &mut self.children[at],
            None => {
                self.children.push(TrieNode {
                    token: first,
                    ..TrieNode::default()
                });
                self.children.last_mut().expect("just pushed")
            }
        };
        child.insert(rest, index, spoken);
    }
}

impl ShortAnswers {
    pub fn new(
        context: &WhisperContext,
        prompt: &str,
        answers: &[ShortAnswer],
    ) -> Result<ShortAnswers, whisper_rs::WhisperError> {
        let zh = whisper_rs::get_lang_id("zh").unwrap_or(1);
        let decoder_prefix =
            |prompt: &str| -> Result<Vec<WhisperTokenId>, whisper_rs::WhisperError> {
                let mut prefix = vec![context.token_prev()];
                if !prompt.is_empty() {
                    prefix.extend(context.tokenize(prompt, 512)?);
                }
                prefix.extend([
                    context.token_sot(),
                    context.token_lang(zh),
                    context.token_transcribe(),
                    context.token_not(),
                ]);
                Ok(prefix)
            };
        let prefix = decoder_prefix(prompt)?;
        let neutral_prefix = decoder_prefix(NEUTRAL_PROMPT)?;
        // Whisper ends most transcripts with a full stop or question mark: each answer is
        // tried bare and with either.
        let mut tokenized = Vec::new();
        let mut trie = TrieNode::default();
        for (index, answer) in answers.iter().enumerate() {
            for ending in ["", "。", "？"] {
                let tokens = context.tokenize(&format!("{}{ending}", answer.text), 64)?;
                let spoken = spoken_len(&answer.text);
                trie.insert(&tokens, tokenized.len(), spoken);
                tokenized.push(Tokenized {
                    answer: index,
                    spoken,
                });
            }
        }
        Ok(ShortAnswers {
            prefix,
            neutral_prefix,
            end_of_text: context.token_eot(),
            widest_margin: answers.iter().map(|a| a.margin).fold(0.0, f32::max),
            answers: answers.to_vec(),
            tokenized,
            trie,
        })
    }

    /// Greedy decoding of the audio the state last encoded with only a neutral prompt
    /// (simplified Mandarin, no expected phrases); at most `max_tokens` text tokens.
    pub fn reread_without_prompt(
        &self,
        state: &mut WhisperState,
        threads: usize,
        max_tokens: usize,
    ) -> Result<Vec<WhisperTokenId>, whisper_rs::WhisperError> {
        let mut tokens = Vec::new();
        state.decode(&self.neutral_prefix, 0, threads)?;
        while tokens.len() < max_tokens {
            let logits = state.get_logits()?;
            // Text tokens and the end of text only; no blank first token (as whisper_full).
            let next = logits[..=self.end_of_text as usize]
                .iter()
                .enumerate()
                .filter(|&(id, _)| {
                    !(tokens.is_empty() && (id == BLANK || id == self.end_of_text as usize))
                })
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(id, _)| id as WhisperTokenId);
            match next {
                Some(token) if token != self.end_of_text => {
                    state.decode(&[token], self.neutral_prefix.len() + tokens.len(), threads)?;
                    tokens.push(token);
                }
                _ => break,
            }
        }
        Ok(tokens)
    }

    /// Token ids from this one on are special (end of text, language, timestamps…).
    pub fn end_of_text(&self) -> WhisperTokenId {
        self.end_of_text
    }

    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    /// Scores the free transcript (`free_text`, `free_tokens`: whisper's own) against the
    /// audio the state last encoded, then finds the best-fitting answer among those within
    /// their margin of it. Returns the free transcript's log probability and that answer.
    ///
    /// Whisper garbles syllables but seldom invents many: an answer less than half as long
    /// as the free transcript is a different utterance, however well its few tokens fit.
    pub fn best_answer(
        &self,
        state: &mut WhisperState,
        threads: usize,
        free_text: &str,
        free_tokens: &[WhisperTokenId],
    ) -> Result<(f32, Option<Fit>), whisper_rs::WhisperError> {
        state.decode(&self.prefix, 0, threads)?;
        let first = log_softmax(state.get_logits()?);

        let mut free = 0.0;
        let mut log_probs = first.clone();
        for (at, &token) in free_tokens.iter().enumerate() {
            free += log_probs[token as usize];
            state.decode(&[token], self.prefix.len() + at, threads)?;
            log_probs = log_softmax(state.get_logits()?);
        }
        free += log_probs[self.end_of_text as usize];

        let mut search = Search {
            state,
            threads,
            answers: self,
            free,
            shortest: spoken_len(free_text).div_ceil(2),
            bound: free - self.widest_margin,
            best: None,
            best_decisive: f32::NEG_INFINITY,
        };
        search.walk(&self.trie, &first, 0.0, self.prefix.len())?;
        tracing::debug!(
            free,
            best = ?search.best.map(|(answer, fit)| (&self.answers[answer].text, fit)),
            best_decisive = search.best_decisive,
            "answer fits"
        );
        let overruled = search.best.is_some_and(|(answer, log_prob)| {
            overruled(
                self.answers[answer].decisive,
                log_prob,
                search.best_decisive,
            )
        });
        if overruled {
            tracing::debug!(
                best_decisive = search.best_decisive,
                "a deciding answer fits better than the harmless one: neither is taken"
            );
            return Ok((free, None));
        }
        let best = search.best.map(|(answer, log_prob)| Fit {
            text: self.answers[answer].text.clone(),
            log_prob,
        });
        Ok((free, best))
    }
}

/// A depth-first walk of the answer trie that skips every branch already less likely than
/// the best complete answer so far (log probabilities only fall along a path), so only the
/// few answers the audio could plausibly be cost decoder steps.
struct Search<'a> {
    state: &'a mut WhisperState,
    threads: usize,
    answers: &'a ShortAnswers,
    /// The free transcript's log probability.
    free: f32,
    /// Answers with fewer spoken characters are not taken.
    shortest: usize,
    /// Paths at or below this cannot win any more.
    bound: f32,
    best: Option<(usize, f32)>,
    /// The best fit of any deciding answer, taken or not (only those above `bound` are
    /// scored: enough to know whether one beats `best`).
    best_decisive: f32,
}

impl Search<'_> {
    /// `log_probs` is the next-token distribution after the node's path, `so_far` the
    /// path's log probability, `n_past` the path's end in the decoder's cache.
    fn walk(
        &mut self,
        node: &TrieNode,
        log_probs: &[f32],
        so_far: f32,
        n_past: usize,
    ) -> Result<(), whisper_rs::WhisperError> {
        let ended = so_far + log_probs[self.answers.end_of_text as usize];
        for &entry in &node.ends {
            let Tokenized { answer, spoken } = self.answers.tokenized[entry];
            if spoken < self.shortest {
                continue;
            }
            if self.answers.answers[answer].decisive {
                self.best_decisive = self.best_decisive.max(ended);
            }
            let allowed = self.free - self.answers.answers[answer].margin;
            if ended > allowed && self.best.is_none_or(|(_, best)| ended > best) {
                self.best = Some((answer, ended));
                self.bound = self.bound.max(ended);
            }
        }
        let mut children: Vec<(&TrieNode, f32)> = node
            .children
            .iter()
            .map(|child| (child, so_far + log_probs[child.token as usize]))
            .collect();
        children.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (child, with_child) in children {
            if with_child <= self.bound {
                break;
            }
            if child.longest < self.shortest {
                continue;
            }
            // Decoding the child's token appends it to the cache at `n_past`; whisper drops
            // anything cached beyond that first, so siblings never see each other.
            self.state.decode(&[child.token], n_past, self.threads)?;
            let next = log_softmax(self.state.get_logits()?);
            self.walk(child, &next, with_child, n_past + 1)?;
        }
        Ok(())
    }
}

/// Whether the best answer within its margin must be refused: a harmless one is refused when
/// a deciding answer fits the audio at least as well, even though that one is not taken.
fn overruled(best_is_decisive: bool, best_fit: f32, best_decisive_fit: f32) -> bool {
    !best_is_decisive && best_decisive_fit >= best_fit
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    let log_sum = max + sum.ln();
    logits.iter().map(|&l| l - log_sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_sums_to_one() {
        let out = log_softmax(&[1.0, 2.0, 3.0, -50.0]);
        let total: f32 = out.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
        assert!(out[2] > out[1] && out[1] > out[0]);
    }

    #[test]
    fn a_harmless_answer_is_refused_when_a_deciding_one_fits_better() {
        // 好的 at -4.0 while 别打了 fits at -3.5 (not taken: worse than the free text).
        assert!(overruled(false, -4.0, -3.5));
        assert!(!overruled(false, -4.0, -6.0));
        assert!(!overruled(false, -4.0, f32::NEG_INFINITY));
        // A deciding answer that was taken is never refused by itself.
        assert!(!overruled(true, -1.0, -1.0));
    }

    #[test]
    fn spoken_length_ignores_punctuation() {
        assert_eq!(spoken_len("好，明白了。"), 4);
        assert_eq!(spoken_len("是我？"), 2);
        assert_eq!(spoken_len(""), 0);
    }

    #[test]
    fn the_trie_shares_beginnings_and_keeps_every_end() {
        let mut root = TrieNode::default();
        root.insert(&[1, 2], 0, 2);
        root.insert(&[1, 2, 3], 1, 3);
        root.insert(&[1, 4], 2, 2);
        root.insert(&[5], 3, 1);
        assert_eq!(root.children.len(), 2);
        let one = &root.children[0];
        assert_eq!(one.children.len(), 2);
        assert_eq!(one.children[0].ends, vec![0]);
        assert_eq!(one.children[0].children[0].ends, vec![1]);
        assert_eq!(root.children[1].ends, vec![3]);
        // Each node knows the longest answer below it, to skip branches too short to take.
        assert_eq!(
            (root.longest, one.longest, one.children[1].longest),
            (3, 3, 2)
        );
        assert_eq!(root.children[1].longest, 1);
    }
}
