//! Mentions (PROTOCOL.md section 3.1): which members an `@id` in a text
//! names.

use crate::{node::Node, wire::Refusal};

/// The members of `room` that `text` mentions (reads the members only
/// when the text has an `@`).
pub(crate) fn of_members(node: &Node, room: &str, text: &str) -> Result<Vec<String>, Refusal> {
    if !text.contains('@') {
        return Ok(Vec::new());
    }
    // A DM room's two users are its members from its first message on,
    // before that message stores them.
    if let Some((a, b)) = crate::wire::dm_users(room) {
        return Ok(find(text, &[a.to_string(), b.to_string()]));
    }
    Ok(find(text, &node.storage().members(room)?))
}

/// Characters that may not come before the `@`.
fn word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '.' || c == '-'
}

/// Characters that may not come right after the id.
fn id_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '-'
}

/// Each member mentioned in `text`, once, in order of first appearance: an
/// `@` at the start or after a character that is not a letter, digit, `_`,
/// `.` or `-`, followed by the longest member id that the text continues
/// with and that is not followed by a letter, digit, `_` or `-`.
pub(crate) fn find(text: &str, members: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut prev: Option<char> = None;
    for (i, c) in text.char_indices() {
        if c == '@' && !prev.is_some_and(word_char) {
            let rest = &text[i + 1..];
            let best = members
                .iter()
                .filter(|m| {
                    rest.starts_with(m.as_str())
                        && !rest[m.len()..].chars().next().is_some_and(id_char)
                })
                .max_by_key(|m| m.len());
            if let Some(m) = best {
                if !out.contains(m) {
                    out.push(m.clone());
                }
            }
        }
        prev = Some(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::find;

    fn m(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn boundaries_and_longest_id() {
        let members = m(&["bo", "bob", "carol", "a.b"]);
        assert_eq!(find("thanks @bob.", &members), m(&["bob"]));
        assert_eq!(find("@bo and @bob and @bo", &members), m(&["bo", "bob"]));
        assert_eq!(find("x@bob", &members), m(&[]));
        assert_eq!(find("@bobby", &members), m(&[]));
        assert_eq!(find("@bob_x @bob-x", &members), m(&[]));
        assert_eq!(find("(@carol) @a.b!", &members), m(&["carol", "a.b"]));
        assert_eq!(find("@dave", &members), m(&[]));
        assert_eq!(find("é@bob", &members), m(&[]));
    }
}
