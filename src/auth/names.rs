//! User and session names: what they may be made of, and how long.

/// Longest accepted user name, in characters. Short enough to fit in a chat
/// line prefix.
pub const MAX_USER_NAME_LEN: usize = 32;

/// Longest accepted session name, in characters. Sessions get more room than
/// users because they describe a topic.
pub const MAX_SESSION_NAME_LEN: usize = 64;

/// Why a user or session name was rejected. The `Display` text is meant to be
/// shown to the user as-is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("name must not be empty")]
    Empty,
    /// The name has more than `max` characters.
    #[error("name must be at most {max} characters long")]
    TooLong {
        /// The limit that was exceeded.
        max: usize,
    },
    /// The name contains a character outside the allowed set.
    #[error("name may only contain letters, digits, '_', '-' and '.' (found {0:?})")]
    InvalidChar(char),
}

/// Checks a user name: 1 to [`MAX_USER_NAME_LEN`] ASCII letters, digits, `_`,
/// `-` or `.`. The restricted alphabet rules out look-alike Unicode names,
/// control characters and separators that would break the line protocol or
/// token format.
pub fn validate_user_name(name: &str) -> Result<(), NameError> {
    validate_name(name, MAX_USER_NAME_LEN)
}

/// Checks a session name: same alphabet as user names (see
/// [`validate_user_name`]) but up to [`MAX_SESSION_NAME_LEN`] characters.
pub fn validate_session_name(name: &str) -> Result<(), NameError> {
    validate_name(name, MAX_SESSION_NAME_LEN)
}

fn validate_name(name: &str, max: usize) -> Result<(), NameError> {
    // Report a bad character before length so that a long pasted line of
    // garbage gets the more useful message.
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(NameError::InvalidChar(c));
    }
    // All characters are ASCII now, so bytes == characters.
    match name.len() {
        0 => Err(NameError::Empty),
        n if n > max => Err(NameError::TooLong { max }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_name_validation() {
        assert_eq!(validate_user_name("alice"), Ok(()));
        assert_eq!(validate_user_name("A.b-c_9"), Ok(()));
        assert_eq!(validate_user_name(&"x".repeat(32)), Ok(()));
        assert_eq!(validate_user_name(""), Err(NameError::Empty));
        assert_eq!(
            validate_user_name(&"x".repeat(33)),
            Err(NameError::TooLong { max: 32 })
        );
        assert_eq!(validate_user_name("bob!"), Err(NameError::InvalidChar('!')));
        assert_eq!(
            validate_user_name("with space"),
            Err(NameError::InvalidChar(' '))
        );
        assert_eq!(validate_user_name("é"), Err(NameError::InvalidChar('é')));
        assert_eq!(
            validate_user_name("a\nb"),
            Err(NameError::InvalidChar('\n'))
        );
    }

    #[test]
    fn session_name_validation() {
        assert_eq!(validate_session_name(&"s".repeat(64)), Ok(()));
        assert_eq!(
            validate_session_name(&"s".repeat(65)),
            Err(NameError::TooLong { max: 64 })
        );
        assert_eq!(validate_session_name(""), Err(NameError::Empty));
        assert_eq!(
            validate_session_name("#general"),
            Err(NameError::InvalidChar('#'))
        );
    }

    #[test]
    fn name_error_messages_are_readable() {
        assert_eq!(
            NameError::InvalidChar('!').to_string(),
            "name may only contain letters, digits, '_', '-' and '.' (found '!')"
        );
        assert_eq!(
            NameError::TooLong { max: 32 }.to_string(),
            "name must be at most 32 characters long"
        );
    }
}
