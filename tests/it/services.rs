//! Integration tests of services (filled in as the feature lands).
