//! What a task is: validated identifiers and the record Redis keeps of each task.

use serde::Serialize;

/// A user id: 1-128 bytes of UTF-8 without control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(String);

/// Why a user id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidUserId {
    /// Empty string.
    #[error("user_id must not be empty")]
    Empty,
    /// More than [`UserId::MAX_LEN`] bytes.
    #[error("user_id must be at most 128 bytes")]
    TooLong,
    /// Contains a control character.
    #[error("user_id must not contain control characters")]
    Control,
}

impl UserId {
    /// Longest user id, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Validate a user id.
    pub fn new(raw: &str) -> Result<Self, InvalidUserId> {
        if raw.is_empty() {
            Err(InvalidUserId::Empty)
        } else if raw.len() > Self::MAX_LEN {
            Err(InvalidUserId::TooLong)
        } else if raw.chars().any(char::is_control) {
            Err(InvalidUserId::Control)
        } else {
            Ok(Self(raw.to_owned()))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A task id: a random UUID, in its hyphenated lowercase form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskId(uuid::Uuid);

impl TaskId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// Parse an id a client sent; `None` if it cannot be one of ours.
    pub fn parse(raw: &str) -> Option<Self> {
        uuid::Uuid::try_parse(raw).ok().map(Self)
    }
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for its start time.
    Queued,
    /// Claimed by a worker, running.
    Running,
    /// Ran and logged.
    Completed,
}

/// A task as `GET /task/{id}` shows it. Times are unix milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct TaskView {
    /// The task's id.
    pub task_id: String,
    /// The user it ran for.
    pub user_id: String,
    /// Queued, running or completed.
    pub status: TaskState,
    /// When the task was accepted.
    pub created_at: i64,
    /// When it is (or was) scheduled to start.
    pub run_at: i64,
    /// When it started, once completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    /// When it completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<i64>,
}

/// A task claimed for running, with what running it needs.
#[derive(Debug, Clone)]
pub struct ClaimedTask {
    /// The task.
    pub task_id: String,
    /// Its user.
    pub user_id: String,
    /// Its scheduled start.
    pub run_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_validated() {
        assert!(UserId::new("alice").is_ok());
        assert!(UserId::new("ünï code ✓").is_ok());
        assert_eq!(UserId::new(""), Err(InvalidUserId::Empty));
        assert_eq!(UserId::new(&"x".repeat(129)), Err(InvalidUserId::TooLong));
        assert!(UserId::new(&"x".repeat(128)).is_ok());
        assert_eq!(UserId::new("a\nb"), Err(InvalidUserId::Control));
        assert_eq!(UserId::new("a\u{7f}"), Err(InvalidUserId::Control));
    }

    #[test]
    fn task_ids_round_trip() {
        let id = TaskId::random();
        assert_eq!(TaskId::parse(&id.to_string()), Some(id));
        assert_eq!(TaskId::parse("nope"), None);
    }
}
