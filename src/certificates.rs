//! Certificates whose expiry the worker watches (`[certificates]`): each named PEM file is
//! read at start-up (an unreadable one is a configuration error) and again at every gauge
//! sample, so a certificate rotated in place is seen without a restart. The expiry is
//! exported as `refunds_certificate_expiry_timestamp_seconds{certificate}`; a file that stops
//! reading while the worker runs exports 0, which alerts as already expired.

use std::{collections::BTreeMap, path::PathBuf};

use x509_parser::pem::Pem;

/// The certificates to watch: name (a metric label) → PEM file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watched(Vec<(String, PathBuf)>);

impl Watched {
    /// Checks that every configured file holds a certificate now.
    pub fn load(configured: &BTreeMap<String, String>) -> Result<Self, String> {
        let watched = Self(
            configured
                .iter()
                .map(|(name, path)| (name.clone(), PathBuf::from(path)))
                .collect(),
        );
        for (name, path) in &watched.0 {
            expiry_of_file(path).map_err(|e| format!("[certificates] {name}: {e}"))?;
        }
        Ok(watched)
    }

    /// Each certificate's name and its expiry (Unix seconds), 0 for one that cannot be read
    /// now (with the reason, for the log).
    pub fn expiries(&self) -> Vec<(&str, i64, Option<String>)> {
        self.0
            .iter()
            .map(|(name, path)| match expiry_of_file(path) {
                Ok(at) => (name.as_str(), at, None),
                Err(e) => (name.as_str(), 0, Some(e)),
            })
            .collect()
    }
}

/// The largest certificate file read: a PEM chain is a few KiB. A path an operator set to
/// something else (a device, a log) is refused instead of read whole every 15 s.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// The `notAfter` of the first certificate in the PEM file at `path`, in Unix seconds.
fn expiry_of_file(path: &std::path::Path) -> Result<i64, String> {
    use std::io::Read;
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    // Checked before opening: opening a FIFO would block until a writer came.
    if !std::fs::metadata(path).map_err(cannot)?.is_file() {
        return Err(format!(
            "cannot read {}: not a regular file",
            path.display()
        ));
    }
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut pem = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(cannot)?;
    if pem.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "{}: larger than {MAX_PEM_BYTES} bytes, not a certificate file",
            path.display()
        ));
    }
    not_after(&pem).map_err(|e| format!("{}: {e}", path.display()))
}

/// The `notAfter` of the first certificate in `pem` (a chain's first is the leaf), in Unix
/// seconds.
pub fn not_after(pem: &[u8]) -> Result<i64, String> {
    for block in Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| format!("not a PEM file: {e}"))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        let certificate = block
            .parse_x509()
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        return Ok(certificate.validity().not_after.timestamp());
    }
    Err("no CERTIFICATE block in the PEM file".into())
}

/// Whether `name` can be a certificate's name (a metric label value and a config key).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 100`:
    /// notAfter=Mar 16 05:08:33 2027 GMT.
    const FIXTURE: &str = "-----BEGIN CERTIFICATE-----
MIIBnjCCAUSgAwIBAgITCZRV7Vxbr4vXw1sre0Rd/Gv3QjAKBggqhkjOPQQDAjAl
MSMwIQYDVQQDDBpyZWZ1bmQtd29ya2VyLXRlc3QtZml4dHVyZTAeFw0yNjEyMDYw
NTA4MzNaFw0yNzAzMTYwNTA4MzNaMCUxIzAhBgNVBAMMGnJlZnVuZC13b3JrZXIt
dGVzdC1maXh0dXJlMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE8+RXUHlACjBg
Ru23BzFzZ2jcoJcYV2bXOBodRCFLKpGx+w9fDy6f6fPP7rLuoye1zfYgwgFJVvEX
fE9lELx1mKNTMFEwHQYDVR0OBBYEFF2CVBz+4Y6cvbA396FzD7jUSuSJMB8GA1Ud
IwQYMBaAFF2CVBz+4Y6cvbA396FzD7jUSuSJMA8GA1UdEwEB/wQFMAMBAf8wCgYI
KoZIzj0EAwIDSAAwRQIgam2Z26EGp6QN0hKlW1Hx1PA98WCEj0yPnVbiY24yhHUC
IQC/Ku6qixEzXpLNYZUEq6RXdRpv3F2IIAtt3T1lrOg+/A==
-----END CERTIFICATE-----
";
    const NOT_AFTER: i64 = 1_805_173_713;

    #[test]
    fn the_expiry_is_the_certificates_not_after() {
        assert_eq!(not_after(FIXTURE.as_bytes()), Ok(NOT_AFTER));
        // A key before the certificate, as in a combined file, is skipped.
        let combined =
            format!("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n{FIXTURE}");
        assert_eq!(not_after(combined.as_bytes()), Ok(NOT_AFTER));
    }

    #[test]
    fn what_is_not_a_certificate_says_so() {
        assert!(not_after(b"hello").unwrap_err().contains("no CERTIFICATE"));
        let broken = FIXTURE.replace("MIIBnjCCAUSg", "MIIBnjCCAUSh");
        assert!(not_after(broken.as_bytes()).is_err());
    }

    #[test]
    fn a_file_that_stops_reading_exports_zero() {
        let dir = std::env::temp_dir().join(format!("certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pix.pem");
        std::fs::write(&path, FIXTURE).unwrap();
        let configured = BTreeMap::from([("pix_client".to_owned(), path.display().to_string())]);
        let watched = Watched::load(&configured).unwrap();
        assert_eq!(watched.expiries(), vec![("pix_client", NOT_AFTER, None)]);
        std::fs::remove_file(&path).unwrap();
        let (name, at, why) = watched.expiries().remove(0);
        assert_eq!((name, at), ("pix_client", 0));
        assert!(why.unwrap().contains("cannot read"));
        let refused = Watched::load(&configured).unwrap_err();
        assert!(
            refused.starts_with("[certificates] pix_client: cannot read"),
            "{refused}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_path_that_is_not_a_certificate_file_is_refused_without_reading_it_whole() {
        let configured = BTreeMap::from([("dev".to_owned(), "/dev/zero".to_owned())]);
        let refused = Watched::load(&configured).unwrap_err();
        assert!(refused.contains("not a regular file"), "{refused}");
        let dir = std::env::temp_dir().join(format!("certs-big-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.pem");
        std::fs::write(&big, vec![b'A'; (MAX_PEM_BYTES + 10) as usize]).unwrap();
        let configured = BTreeMap::from([("big".to_owned(), big.display().to_string())]);
        let refused = Watched::load(&configured).unwrap_err();
        assert!(refused.contains("not a certificate file"), "{refused}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn names_are_label_values() {
        assert!(valid_name("pix_client"));
        assert!(!valid_name(""));
        assert!(!valid_name("Pix-Client"));
    }
}
