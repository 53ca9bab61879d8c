//! What a delivery says its body is: the AMQP `content_type` and `content_encoding`
//! properties. A job is plain UTF-8 JSON; a body the publisher declares to be something else
//! (XML, a form, gzip) is refused with a reason that names the property, instead of a
//! puzzling "not valid UTF-8" about compressed bytes.

use super::{JobError, truncate};

/// Media types a job may be declared as (besides none at all).
const JSON_TYPES: [&str; 2] = ["application/json", "text/json"];

/// Checks the declared media of a body: `content_type` absent or JSON (`application/json`,
/// `text/json` or `application/…+json`, with no charset but UTF-8), `content_encoding` absent
/// or an identity (`identity`, or `utf-8`, which some clients put there).
pub fn check_media(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
) -> Result<(), JobError> {
    if let Some(declared) = content_encoding.map(str::trim).filter(|e| !e.is_empty()) {
        let identity = ["identity", "utf-8", "utf8"]
            .iter()
            .any(|name| declared.eq_ignore_ascii_case(name));
        if !identity {
            return Err(JobError::new(
                "content_encoding",
                format!(
                    "the message property says {:?}; the worker reads only plain (identity) \
                     bodies: publish the JSON uncompressed, without content_encoding",
                    truncate(declared, 40)
                ),
            ));
        }
    }
    let Some(declared) = content_type.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(());
    };
    let mut parts = declared.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let json = JSON_TYPES.contains(&media.as_str())
        || (media.starts_with("application/") && media.ends_with("+json"));
    if !json {
        return Err(JobError::new(
            "content_type",
            format!(
                "the message property says {:?}; a refund job is JSON: publish it as \
                 application/json (or without content_type)",
                truncate(declared, 60)
            ),
        ));
    }
    for parameter in parts {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        let value = value.trim().trim_matches('"');
        if name.trim().eq_ignore_ascii_case("charset")
            && !(value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8"))
        {
            return Err(JobError::new(
                "content_type",
                format!(
                    "the message property declares charset {:?}; a refund job is UTF-8 JSON",
                    truncate(value, 40)
                ),
            ));
        }
    }
    Ok(())
}
