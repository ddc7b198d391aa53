//! Durations written as people write them: `2s`, `500ms`, `2h`, `1h 30m`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer, de::Error};

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        D::Error::custom(format!(
            "`{text}` is not a duration ({e}); write it like 2s, 500ms or 2h"
        ))
    })
}

pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*value).to_string())
}
