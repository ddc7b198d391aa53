//! Durations written as people write them: `2s`, `500ms`, `2h`, `1h 30m`.

use std::time::Duration;

use serde::{
    Deserializer, Serializer,
    de::{Error, Visitor},
};

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(Written)
}

/// A duration as written: text with units; a bare number is refused with the fix, since
/// seconds and milliseconds are both common guesses.
struct Written;

impl Visitor<'_> for Written {
    type Value = Duration;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a duration such as 2s, 500ms or 2h")
    }

    fn visit_str<E: Error>(self, text: &str) -> Result<Duration, E> {
        humantime::parse_duration(text).map_err(|e| {
            E::custom(format!(
                "`{text}` is not a duration ({e}); write it like 2s, 500ms or 2h"
            ))
        })
    }

    fn visit_u64<E: Error>(self, n: u64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "`{n}` has no unit; write {n}s for seconds, {n}ms for milliseconds"
        )))
    }

    fn visit_i64<E: Error>(self, n: i64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "`{n}` is not a duration; write it like 2s, 500ms or 2h"
        )))
    }

    fn visit_f64<E: Error>(self, n: f64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "`{n}` has no unit; write it like 1500ms or 1.5s"
        )))
    }
}

pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*value).to_string())
}
