//! pyfpm's worker core.
