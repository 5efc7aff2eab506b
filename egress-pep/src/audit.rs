//! Audit records (DESIGN §7.2 "Audit"): one per tunnel and one per cleartext/intercepted request,
//! to the log and an optional JSON-lines file. Never a secret, token or header value.
