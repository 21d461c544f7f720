//! The renewal script as data: lines, states and transitions, loaded from `script/`.
// Skeleton; implementation lands with the core issue.

/// The loaded and validated script.
pub struct Script {}
