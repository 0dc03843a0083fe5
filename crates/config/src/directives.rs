//! The directive table: every configuration directive, declared once.
