//! Integration tests of mandates (filled in as the feature lands).
