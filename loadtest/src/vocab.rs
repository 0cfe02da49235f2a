//! Realistic-enough message text for the search benchmarks.
//!
//! Owns: a fixed vocabulary of made-up words (consonant-vowel syllables, so
//! the text is plain ASCII that needs no escaping and is the same on every
//! run), drawing words from it with a Zipf distribution (rank r with weight
//! 1/r^s, like word frequencies in real text), building messages of a few
//! words, and picking query words log-uniformly over the ranks so that
//! queries range from words in most messages to words in a handful.
//!
//! Search matches a query word as a prefix of a message word, so a short
//! word that starts longer ones matches those too; two- and three-syllable
//! words are mixed over the ranks (not short words first) to keep that
//! effect as mild as in real text.

use crate::ws::xorshift;

/// Consonants and vowels of the syllables (16 × 5 = 80 syllables). No `c`
/// or `y`: the harness's own marker words use them and can never collide.
const CONSONANTS: &[u8] = b"bdfghjklmnprstvz";
const VOWELS: &[u8] = b"aeiou";
const SYLLABLES: u64 = 80;
/// Two-syllable words, then three-syllable ones.
const SPACE: u64 = SYLLABLES * SYLLABLES + SYLLABLES * SYLLABLES * SYLLABLES;
/// Two primes other than 2, 3 and 5, so coprime with `SPACE` (518,400 =
/// 2^8·3^4·5^2): `rank * STRIDE % SPACE` is a different word for every rank,
/// and neighbouring ranks get unrelated words of either length.
const STRIDE: u64 = 7919 * 13;

/// A vocabulary and its Zipf sampling table.
pub struct Vocab {
    words: Vec<String>,
    /// Cumulative weights, scaled to `u64::MAX`; `cdf[r]` covers ranks 0..=r.
    cdf: Vec<u64>,
}

impl Vocab {
    /// `size` words, rank r (0-based) drawn with weight 1/(r+1)^`s`.
    pub fn new(size: usize, s: f64) -> Vocab {
        let size = size.clamp(1, SPACE as usize);
        let words = (0..size as u64).map(|r| spell(r * STRIDE % SPACE)).collect();
        let weights: Vec<f64> = (1..=size).map(|r| (r as f64).powf(-s)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let mut cdf: Vec<u64> = weights
            .iter()
            .map(|w| {
                acc += w / total;
                (acc.min(1.0) * u64::MAX as f64) as u64
            })
            .collect();
        if let Some(last) = cdf.last_mut() {
            *last = u64::MAX;
        }
        Vocab { words, cdf }
    }

    /// The word of rank `r` (0: the most frequent).
    pub fn word(&self, r: usize) -> &str {
        &self.words[r]
    }

    /// A rank drawn from the Zipf distribution.
    pub fn zipf_rank(&self, seed: &mut u64) -> usize {
        let u = xorshift(seed);
        self.cdf.partition_point(|&c| c < u).min(self.words.len() - 1)
    }

    /// A rank drawn log-uniformly from 0..len: as many queries among the
    /// 10 most frequent words as among ranks 100..1000.
    pub fn query_rank(&self, seed: &mut u64) -> usize {
        let u = (xorshift(seed) >> 11) as f64 / (1u64 << 53) as f64;
        let r = (self.words.len() as f64).powf(u) as usize;
        r.saturating_sub(1).min(self.words.len() - 1)
    }

    /// Writes a message of `min..=max` Zipf words separated by spaces.
    pub fn sentence(&self, seed: &mut u64, min: usize, max: usize, out: &mut Vec<u8>) {
        out.clear();
        let n = min + (xorshift(seed) % (max.saturating_sub(min) as u64 + 1)) as usize;
        for i in 0..n.max(1) {
            if i > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(self.words[self.zipf_rank(seed)].as_bytes());
        }
    }
}

/// The word with index `i` of the syllable space.
fn spell(i: u64) -> String {
    let (mut n, syllables) =
        if i < SYLLABLES * SYLLABLES { (i, 2) } else { (i - SYLLABLES * SYLLABLES, 3) };
    let mut w = String::with_capacity(6);
    for _ in 0..syllables {
        let s = n % SYLLABLES;
        n /= SYLLABLES;
        w.push(CONSONANTS[(s / 5) as usize] as char);
        w.push(VOWELS[(s % 5) as usize] as char);
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn words_are_distinct_and_zipf_is_skewed() {
        let v = Vocab::new(20_000, 1.0);
        let set: HashSet<&str> = (0..v.words.len()).map(|r| v.word(r)).collect();
        assert_eq!(set.len(), 20_000);
        assert!(v.words.iter().all(|w| w.bytes().all(|b| b.is_ascii_lowercase())));
        let mut seed = 7;
        let mut top = 0;
        let mut rare = 0;
        for _ in 0..100_000 {
            match v.zipf_rank(&mut seed) {
                0 => top += 1,
                r if r >= 10_000 => rare += 1,
                _ => {}
            }
        }
        // 1/H(20000) ≈ 9.5% for rank 1; ranks 10001..20000 ≈ 6.6%.
        assert!((8_500..10_500).contains(&top), "top {top}");
        assert!((5_500..7_700).contains(&rare), "rare {rare}");
        let mut out = Vec::new();
        v.sentence(&mut seed, 4, 16, &mut out);
        let n = out.split(|&b| b == b' ').count();
        assert!((4..=16).contains(&n));
        let q: Vec<usize> = (0..1000).map(|_| v.query_rank(&mut seed)).collect();
        assert!(q.iter().filter(|&&r| r < 10).count() > 100);
        assert!(q.iter().filter(|&&r| r >= 1000).count() > 150);
        assert!(q.iter().all(|&r| r < 20_000));
    }
}
