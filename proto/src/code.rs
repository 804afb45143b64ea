//! Error codes (SPEC §3) and the error reply: `{"ok":false,"error":CODE,"message":TEXT}`.

use crate::False;
use serde::{Deserialize, Serialize};

/// Error codes of SPEC §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// Malformed request.
    BadRequest,
    /// No such command.
    UnknownCommand,
    /// Not authenticated.
    Unauthorized,
    /// No such session (or not yours).
    NotFound,
    /// Not in this state.
    InvalidState,
    /// Over a size limit.
    TooLarge,
    /// Over a count or budget limit.
    LimitReached,
    /// Not an acceptable ELF.
    InvalidElf,
    /// Not an acceptable bundle.
    InvalidBundle,
    /// Not supported here.
    Unsupported,
    /// Our fault.
    Internal,
}

impl Code {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::UnknownCommand => "unknown_command",
            Code::Unauthorized => "unauthorized",
            Code::NotFound => "not_found",
            Code::InvalidState => "invalid_state",
            Code::TooLarge => "too_large",
            Code::LimitReached => "limit_reached",
            Code::InvalidElf => "invalid_elf",
            Code::InvalidBundle => "invalid_bundle",
            Code::Unsupported => "unsupported",
            Code::Internal => "internal",
        }
    }
}

/// The error reply: a refusal, with its code and a message a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}: {message}", error.as_str())]
pub struct Error {
    /// Always `false`.
    pub ok: False,
    /// Error code.
    pub error: Code,
    /// What went wrong and what to do about it.
    pub message: String,
}

impl Error {
    /// A refusal.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Error { ok: False, error: code, message: message.into() }
    }

    /// `bad_request`.
    pub fn bad(message: impl Into<String>) -> Self {
        Error::new(Code::BadRequest, message)
    }

    /// `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(Code::NotFound, message)
    }

    /// `invalid_state`.
    pub fn invalid_state(message: impl Into<String>) -> Self {
        Error::new(Code::InvalidState, message)
    }

    /// `internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(Code::Internal, message)
    }

    /// `unsupported`.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Error::new(Code::Unsupported, message)
    }

    /// `limit_reached`.
    pub fn limit(message: impl Into<String>) -> Self {
        Error::new(Code::LimitReached, message)
    }
}
