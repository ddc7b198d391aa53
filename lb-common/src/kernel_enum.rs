//! `kernel_enum!`: a `#[repr(u8)]` enum whose values the datapath stores as bytes in map values,
//! with the one conversion from a byte, and its word in the config, the CLI and metrics.
//!
//! Map values keep a plain `u8` field (no enum in a `Pod` struct: any byte must be a valid
//! value), documented as holding one of these; both sides convert with `as u8` and `from_u8`.

macro_rules! kernel_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:literal => $label:literal,)+ }
        default $default:ident
    ) => {
        $(#[$meta])*
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
        pub enum $name {
            $($(#[$vmeta])* #[cfg_attr(feature = "user", serde(rename = $label))] $variant = $value,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The variant a map byte holds; `None` for a byte no xnlb writes.
            #[inline(always)]
            pub const fn from_u8(byte: u8) -> Option<Self> {
                match byte {
                    $($value => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// Its word in the config, the CLI and the metrics.
            pub const fn label(self) -> &'static str {
                match self { $($name::$variant => $label,)+ }
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name::$default
            }
        }
    };
}

pub(crate) use kernel_enum;
