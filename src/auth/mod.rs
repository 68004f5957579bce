//! Authentication building blocks: name validation, password hashing, signed
//! login tokens and throttling of failed logins.
//!
//! Everything here is pure and synchronous. Password hashing is deliberately
//! slow (tens of milliseconds), so async callers should run
//! [`hash_password`], [`verify_password`] and [`dummy_verify`] on a blocking
//! thread.

mod names;
mod password;
mod throttle;
mod token;

pub use names::{
    MAX_SESSION_NAME_LEN, MAX_USER_NAME_LEN, NameError, validate_session_name, validate_user_name,
};
pub use password::{
    AuthError, PasswordCost, dummy_verify, hash_password, hash_password_with, verify_password,
};
pub(crate) use throttle::ip_key;
pub use throttle::{
    BASE_DELAY, FAILURE_WINDOW, IP_FREE_FAILURES, LoginThrottle, MAX_DELAY, MAX_ENTRIES,
    NAME_FREE_FAILURES,
};
pub use token::{Claims, TokenError, TokenKey};
