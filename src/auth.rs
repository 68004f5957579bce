//! Placeholder until the accounts work lands: name rules only.

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing given.
    #[error("name is empty")]
    Empty,
    /// Longer than allowed.
    #[error("name is longer than {max} characters")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// A character outside the allowed set.
    #[error("name may only contain letters, digits, '_', '-' and '.' (found {0:?})")]
    InvalidChar(char),
}

fn validate(name: &str, max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.chars().count() > max {
        return Err(NameError::TooLong { max });
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        Some(c) => Err(NameError::InvalidChar(c)),
        None => Ok(()),
    }
}

/// User names: 1–32 of letters, digits, `_`, `-`, `.`.
pub fn validate_user_name(name: &str) -> Result<(), NameError> {
    validate(name, 32)
}

/// Session names: like user names, up to 64 characters.
pub fn validate_session_name(name: &str) -> Result<(), NameError> {
    validate(name, 64)
}
