//! Naming rules: room names, user ids and direct-message rooms.

/// `^[a-z0-9][a-z0-9_.-]{0,63}$`
pub fn valid_room(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(&c))
}

/// `^[A-Za-z0-9_.-]{1,64}$`
pub fn valid_user(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
}

/// The DM room of two distinct users: `dm:<a>:<b>` with a < b by bytes.
pub fn dm_room(x: &str, y: &str) -> String {
    let (a, b) = if x < y { (x, y) } else { (y, x) };
    format!("dm:{a}:{b}")
}

/// The two users of a well-formed DM room name, if it is one.
pub fn dm_users(room: &str) -> Option<(&str, &str)> {
    let rest = room.strip_prefix("dm:")?;
    let (a, b) = rest.split_once(':')?;
    (valid_user(a) && valid_user(b) && a < b).then_some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_room("general"));
        assert!(valid_room("0a_.-"));
        assert!(!valid_room("General"));
        assert!(!valid_room("_x"));
        assert!(!valid_room(&"a".repeat(65)));
        assert!(valid_room(&"a".repeat(64)));
        assert!(!valid_room("dm:a:b"));
        assert!(valid_user("Alice.B-1_"));
        assert!(!valid_user("a b"));
        assert_eq!(dm_room("bob", "alice"), "dm:alice:bob");
        assert_eq!(dm_users("dm:alice:bob"), Some(("alice", "bob")));
        assert_eq!(dm_users("dm:bob:alice"), None);
    }
}
