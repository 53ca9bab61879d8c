//! Integration tests of governed (filled in as the feature lands).
