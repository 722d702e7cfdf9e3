//! Name rules. Lock, queue and namespace names are DNS-1123 labels — what Kubernetes
//! allows for the resources they come from — so a validated name is always exactly one
//! znode path segment: no `/`, no `..`, no NUL, no unicode look-alikes.

use std::fmt;

/// The rule, stated the way an error message shows it.
pub const DNS_LABEL_RULE: &str = "a DNS-1123 label: 1 to 63 characters, lowercase letters a-z, digits 0-9 \
     and '-', starting and ending with a letter or digit";

/// A validated DNS-1123 label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} name {value:?}: must be {DNS_LABEL_RULE}")]
pub struct NameError {
    /// What was being named: "lock", "queue", "namespace".
    pub kind: &'static str,
    pub value: String,
}

impl Name {
    /// Validates `value` as the name of a `kind` ("lock", "queue", "namespace").
    pub fn new(kind: &'static str, value: &str) -> Result<Self, NameError> {
        if is_dns_label(value) {
            Ok(Self(value.to_owned()))
        } else {
            Err(NameError { kind, value: value.chars().take(100).collect() })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

fn is_dns_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    let edge_ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(|b| edge_ok(b) || *b == b'-')
        && bytes.first().is_some_and(edge_ok)
        && bytes.last().is_some_and(edge_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_kubernetes_names() {
        for ok in ["a", "orders", "orders-v2", "0", "x".repeat(63).as_str()] {
            assert!(Name::new("lock", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_path_tricks_and_look_alikes() {
        let long = "x".repeat(64);
        for bad in [
            "",
            "..",
            ".",
            "a/b",
            "/a",
            "a\0b",
            "Orders",
            "-a",
            "a-",
            "a_b",
            "a.b",
            &long,
            "ordеrs", // Cyrillic 'е'
            "a b",
            "ｏrders",   // fullwidth 'ｏ'
            "zookeeper", // fine as a label: shows the rule is about syntax, not reserved words
        ] {
            let result = Name::new("lock", bad);
            if bad == "zookeeper" {
                assert!(result.is_ok());
            } else {
                let err = result.expect_err(bad);
                assert!(err.to_string().contains("DNS-1123"), "{err}");
            }
        }
    }
}
