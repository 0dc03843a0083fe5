//! Logging set-up for the manager.
