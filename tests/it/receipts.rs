//! Integration tests of receipts (filled in as the feature lands).
