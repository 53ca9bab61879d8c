//! How failures are worded for people: one line, the root cause, no credentials, no errno
//! noise ("connection refused", not "Connection refused (os error 111)").

/// The innermost cause of an error, lower-cased and without the OS error number.
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = cause.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// `host:port` of a URL like `amqp://user:pass@host:5672/vhost`, without user and password.
pub fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host = rest.split(['/', '?']).next().unwrap_or(rest);
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_hide_credentials() {
        assert_eq!(
            host_port("amqp://guest:guest@127.0.0.1:5672/%2f", 5672),
            "127.0.0.1:5672"
        );
        assert_eq!(host_port("amqp://rabbit/%2f", 5672), "rabbit:5672");
        assert_eq!(
            host_port("redis://:secret@cache:6380/0", 6379),
            "cache:6380"
        );
        assert_eq!(host_port("redis://127.0.0.1/", 6379), "127.0.0.1:6379");
    }

    #[test]
    fn causes_read_as_plain_words() {
        let io = std::io::Error::other("Connection refused (os error 111)");
        assert_eq!(root_cause(&io), "connection refused");
    }
}
