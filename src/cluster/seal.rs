//! Authenticated cluster payloads: every payload a node puts into Redis is
//! sealed with an HMAC-SHA256 whose key is derived (HKDF) from the
//! cluster's shared secret, never the raw secret; a node opens only what
//! verifies. And a replay window, so a payload seen once is not applied
//! twice.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;

/// Bytes of the tag in front of every sealed payload.
const TAG: usize = 32;
/// Counters remembered behind the highest seen, per sender.
const WINDOW: u64 = 4096;

/// Seals and opens payloads with the cluster key.
#[derive(Clone)]
pub struct Seal {
    key: [u8; 32],
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seal(..)")
    }
}

impl Seal {
    /// The cluster key derived from `secret`.
    pub fn new(secret: &[u8]) -> Seal {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(b"chinwag"), secret);
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's limit: this cannot fail.
        let _ = hk.expand(b"cluster payload v1", &mut key);
        Seal { key }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes a key of any length: this cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!())
    }

    /// `tag || body`.
    pub fn seal(&self, body: &[u8]) -> Vec<u8> {
        let mut m = self.mac();
        m.update(body);
        let mut out = m.finalize().into_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    /// The body of a sealed payload whose tag verifies (in constant time).
    pub fn open<'a>(&self, sealed: &'a [u8]) -> Option<&'a [u8]> {
        if sealed.len() < TAG {
            return None;
        }
        let (tag, body) = sealed.split_at(TAG);
        let mut m = self.mac();
        m.update(body);
        m.verify_slice(tag).ok().map(|()| body)
    }
}

/// Which counters each sender (node and boot) has been seen with: the
/// highest, and a bitmap of the [`WINDOW`] below it (publishes of one node
/// can arrive a little out of counter order).
#[derive(Debug, Default)]
pub struct Replays {
    senders: HashMap<(String, u64), (u64, Vec<u64>)>,
}

impl Replays {
    /// Records counter `n` of `sender`; false if it was seen (or is too old).
    pub fn fresh(&mut self, node: &str, boot: u64, n: u64) -> bool {
        let words = (WINDOW / 64) as usize;
        let (top, bits) =
            self.senders.entry((node.to_string(), boot)).or_insert_with(|| (0, vec![0; words]));
        if n > *top {
            let shift = n - *top;
            *top = n;
            if shift >= WINDOW {
                bits.iter_mut().for_each(|w| *w = 0);
            } else {
                // Slide: bit i stands for counter `top - i`.
                for _ in 0..shift {
                    let mut carry = 0;
                    for w in bits.iter_mut() {
                        let next = *w >> 63;
                        *w = (*w << 1) | carry;
                        carry = next;
                    }
                }
            }
            bits[0] |= 1;
            return true;
        }
        let back = *top - n;
        if back >= WINDOW {
            return false;
        }
        let (word, bit) = ((back / 64) as usize, back % 64);
        let seen = bits[word] & (1 << bit) != 0;
        bits[word] |= 1 << bit;
        !seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_verifies_opens() {
        let s = Seal::new(b"a secret of at least thirty-two bytes");
        let sealed = s.seal(b"hello");
        assert_eq!(s.open(&sealed), Some(&b"hello"[..]));
        let mut forged = sealed.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(s.open(&forged), None);
        assert_eq!(Seal::new(b"another secret, also long enough!!").open(&sealed), None);
        assert_eq!(s.open(b"short"), None);
    }

    #[test]
    fn replays_are_refused_out_of_order_ones_accepted() {
        let mut r = Replays::default();
        assert!(r.fresh("n", 1, 5));
        assert!(r.fresh("n", 1, 7));
        assert!(r.fresh("n", 1, 6), "a little out of order");
        assert!(!r.fresh("n", 1, 6));
        assert!(!r.fresh("n", 1, 7));
        assert!(r.fresh("n", 2, 6), "another boot");
        assert!(r.fresh("n", 1, 10_000));
        assert!(!r.fresh("n", 1, 5), "too old");
    }
}
