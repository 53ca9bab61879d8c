//! The asaas connector and its sandbox twin, end to end (filled in with the connector).
