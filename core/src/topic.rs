//! Topics and trigger patterns, NATS-style: tokens separated by `.`; a pattern may use
//! `*` for exactly one token and a final `>` for one or more.

/// Longest topic or pattern, in bytes.
pub const MAX_TOPIC_BYTES: usize = 255;

/// Why a topic or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} `{text}`: {why}")]
pub struct TopicError {
    /// "topic" or "trigger pattern".
    pub kind: &'static str,
    /// What was given.
    pub text: String,
    /// What is wrong.
    pub why: &'static str,
}

fn check(text: &str, kind: &'static str, wildcards: bool) -> Result<(), TopicError> {
    let err = |why| TopicError {
        kind,
        text: text.to_string(),
        why,
    };
    if text.is_empty() || text.len() > MAX_TOPIC_BYTES {
        return Err(err("use 1 to 255 bytes, like `orders.created`"));
    }
    let tokens: Vec<&str> = text.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return Err(err("tokens between dots must not be empty"));
        }
        match *t {
            "*" | ">" if !wildcards => {
                return Err(err(
                    "wildcards `*` and `>` are for triggers, not for publishing",
                ));
            }
            ">" if i + 1 != tokens.len() => return Err(err("`>` may only be the last token")),
            "*" | ">" => {}
            _ => {
                if !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    return Err(err("use letters, digits, `_` and `-` in tokens"));
                }
            }
        }
    }
    Ok(())
}

/// Validates a topic to publish to.
pub fn check_topic(topic: &str) -> Result<(), TopicError> {
    check(topic, "topic", false)
}

/// Validates a trigger pattern.
pub fn check_pattern(pattern: &str) -> Result<(), TopicError> {
    check(pattern, "trigger pattern", true)
}

/// Whether `topic` falls under `pattern`.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut p = pattern.split('.');
    let mut t = topic.split('.');
    loop {
        match (p.next(), t.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_patterns_are_validated() {
        assert!(check_topic("orders.created").is_ok());
        assert!(check_topic("a").is_ok());
        for bad in ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", "ä"] {
            assert!(check_topic(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_topic(&"a".repeat(256)).is_err());
        for good in ["orders.*", "orders.>", "*", ">", "a.*.c"] {
            assert!(check_pattern(good).is_ok(), "{good:?} refused");
        }
        assert!(check_pattern("a.>.b").is_err());
    }

    #[test]
    fn wildcards_match_like_nats() {
        assert!(matches("orders.created", "orders.created"));
        assert!(!matches("orders.created", "orders.paid"));
        assert!(matches("orders.*", "orders.paid"));
        assert!(!matches("orders.*", "orders.paid.late"));
        assert!(!matches("orders.*", "orders"));
        assert!(matches("orders.>", "orders.paid.late"));
        assert!(!matches("orders.>", "orders"));
        assert!(matches(">", "x"));
        assert!(matches("*.created", "users.created"));
        assert!(!matches("orders.created.x", "orders.created"));
    }
}
