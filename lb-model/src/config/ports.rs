//! Port rules: a number (`443`) or a string holding one port or a range (`"1024-65535"`).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};

/// An inclusive port range; a single port is `lo == hi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.lo <= other.hi && other.lo <= self.hi
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let port = |s: &str| -> Result<u16, String> {
            let s = s.trim();
            match s.parse::<u16>() {
                Ok(0) => Err("port 0 cannot be balanced".to_string()),
                Ok(p) => Ok(p),
                Err(_) => Err(format!("`{s}` is not a port (1-65535)")),
            }
        };
        let range = match text.split_once('-') {
            Some((lo, hi)) if lo.trim().is_empty() || hi.trim().is_empty() => {
                return Err(format!(
                    "range `{text}` lacks a {} port; write it like \"1024-65535\"",
                    if lo.trim().is_empty() {
                        "first"
                    } else {
                        "last"
                    }
                ));
            }
            Some((lo, hi)) => PortRange {
                lo: port(lo)?,
                hi: port(hi)?,
            },
            None => {
                let p = port(text)?;
                PortRange { lo: p, hi: p }
            }
        };
        if range.lo > range.hi {
            return Err(format!(
                "range `{text}` runs backwards; write the lower port first"
            ));
        }
        Ok(range)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(u64),
            Text(String),
        }
        let text = match Written::deserialize(d).map_err(|_| {
            D::Error::custom("a port is a number (443) or a string (\"443\" or \"1024-65535\")")
        })? {
            Written::Number(n) => n.to_string(),
            Written::Text(t) => t,
        };
        PortRange::parse(&text).map_err(D::Error::custom)
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_without_an_end_says_so() {
        assert_eq!(
            PortRange::parse("1024-").unwrap_err(),
            "range `1024-` lacks a last port; write it like \"1024-65535\""
        );
        assert!(
            PortRange::parse("-80")
                .unwrap_err()
                .contains("lacks a first port")
        );
    }

    #[test]
    fn parses_ports_and_ranges() {
        assert_eq!(PortRange::parse("443"), Ok(PortRange { lo: 443, hi: 443 }));
        assert_eq!(
            PortRange::parse("1024-65535"),
            Ok(PortRange {
                lo: 1024,
                hi: 65535
            })
        );
        assert!(PortRange::parse("0").is_err());
        assert!(PortRange::parse("80-20").is_err());
        assert!(PortRange::parse("70000").is_err());
        assert!(PortRange::parse("http").is_err());
        let a = PortRange::parse("100-200").unwrap();
        assert!(a.overlaps(&PortRange::parse("200").unwrap()));
        assert!(!a.overlaps(&PortRange::parse("201-300").unwrap()));
    }
}
