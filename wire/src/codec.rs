//! The binary layout shared by every frame: a two-byte header, then one rkyv archive.
//!
//! ```text
//! +---------+------+------------------------------------------+
//! | version | kind | rkyv archive of the kind's body (root at  |
//! |  (u8)   | (u8) | the end, unaligned little-endian format)  |
//! +---------+------+------------------------------------------+
//! ```
//!
//! The archive is validated in place (bytecheck) and read without copying; the format is
//! unaligned, so a frame may start at any offset of a socket buffer.

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::rancor::{BoxedError, Strategy};
use rkyv::ser::allocator::ArenaHandle;
use rkyv::{Archive, Deserialize, Portable, Serialize};

use crate::{PROTOCOL_VERSION, WireError};

/// Bytes before the archive: version and kind.
pub const HEADER_LEN: usize = 2;

/// Writes the header and the archive of `body` into one buffer.
pub(crate) fn encode<T>(kind: u8, body: &T, limit: usize) -> Result<Vec<u8>, WireError>
where
    T: for<'a> Serialize<HighSerializer<Vec<u8>, ArenaHandle<'a>, BoxedError>>,
{
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&[PROTOCOL_VERSION, kind]);
    let out = rkyv::api::high::to_bytes_in::<_, BoxedError>(body, out)
        .map_err(|e| WireError::Encode(e.to_string()))?;
    if out.len() > limit {
        return Err(WireError::TooLarge {
            size: out.len(),
            limit,
        });
    }
    Ok(out)
}

/// Checks the size and version, and returns the kind byte and the archive.
pub(crate) fn split_header(bytes: &[u8], limit: usize) -> Result<(u8, &[u8]), WireError> {
    if bytes.len() > limit {
        return Err(WireError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    match bytes {
        [version, kind, archive @ ..] => {
            if *version != PROTOCOL_VERSION {
                return Err(WireError::UnsupportedVersion(*version));
            }
            Ok((*kind, archive))
        }
        _ => Err(WireError::Truncated(bytes.len())),
    }
}

/// Validates an archive in place and returns a reference into `bytes`.
pub(crate) fn access<T>(bytes: &[u8]) -> Result<&T, WireError>
where
    T: Portable + for<'a> rkyv::bytecheck::CheckBytes<HighValidator<'a, BoxedError>>,
{
    rkyv::access::<T, BoxedError>(bytes).map_err(|e| WireError::Malformed(e.to_string()))
}

/// Copies a validated archive out into its owned form.
pub(crate) fn deserialize<T>(archived: &T::Archived) -> Result<T, WireError>
where
    T: Archive,
    T::Archived: Deserialize<T, Strategy<rkyv::de::Pool, BoxedError>>,
{
    rkyv::deserialize::<T, BoxedError>(archived).map_err(|e| WireError::Malformed(e.to_string()))
}

/// The limits of one frame body, checked on the owned form (before encoding, after JSON
/// decoding) and on the archived form (after validation).
pub(crate) trait CheckLimits {
    fn check_limits(&self) -> Result<(), WireError> {
        Ok(())
    }
}

/// Declares a direction's frames: the owned enum (also the JSON form, tagged by `type`), the
/// kind numbers, and the zero-copy view over validated bytes.
macro_rules! frame_set {
    (
        $(#[$doc:meta])*
        $Frame:ident, $FrameRef:ident, $Kind:ident, limit = $limit:expr;
        $( $(#[$vdoc:meta])* $Variant:ident($Body:ty) = $code:literal, $name:literal; )+
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[cfg_attr(any(test, feature = "arbitrary"), derive(proptest_derive::Arbitrary))]
        #[serde(tag = "type")]
        pub enum $Frame {
            $( $(#[$vdoc])* #[serde(rename = $name)] $Variant($Body), )+
        }

        /// The kind byte of the frame header.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $Kind {
            $( $(#[$vdoc])* $Variant = $code, )+
        }

        impl $Kind {
            /// Every kind of this direction.
            pub const ALL: &'static [$Kind] = &[ $( $Kind::$Variant, )+ ];

            /// The kind a header byte names, if any.
            pub fn from_u8(byte: u8) -> Option<$Kind> {
                match byte {
                    $( $code => Some($Kind::$Variant), )+
                    _ => None,
                }
            }

            /// The JSON `type` tag, also used as a metrics label.
            pub fn name(self) -> &'static str {
                match self {
                    $( $Kind::$Variant => $name, )+
                }
            }

            /// The kind a JSON `type` tag names, if any.
            pub fn from_name(name: &str) -> Option<$Kind> {
                match name {
                    $( $name => Some($Kind::$Variant), )+
                    _ => None,
                }
            }
        }

        /// A frame validated in place: each variant borrows the archive inside the bytes.
        #[derive(Debug, Clone, Copy)]
        pub enum $FrameRef<'a> {
            $( $(#[$vdoc])* $Variant(&'a rkyv::Archived<$Body>), )+
        }

        impl<'a> $FrameRef<'a> {
            /// Validates `bytes` (size, header, archive, limits) and borrows the frame in place.
            pub fn access(bytes: &'a [u8]) -> Result<Self, $crate::WireError> {
                let frame = Self::access_archive(bytes)?;
                frame.check_limits()?;
                Ok(frame)
            }

            /// Validates the size, header and archive, but not the limits: a frame that
            /// breaks only a limit can still be read, to name the request it refuses.
            fn access_archive(bytes: &'a [u8]) -> Result<Self, $crate::WireError> {
                let (kind, archive) = $crate::codec::split_header(bytes, $limit)?;
                Ok(match $Kind::from_u8(kind).ok_or($crate::WireError::UnknownKind(kind))? {
                    $( $Kind::$Variant => $FrameRef::$Variant($crate::codec::access::<rkyv::Archived<$Body>>(archive)?), )+
                })
            }

            /// The frame's kind.
            pub fn kind(&self) -> $Kind {
                match self {
                    $( $FrameRef::$Variant(_) => $Kind::$Variant, )+
                }
            }

            /// Copies the frame out into its owned form.
            pub fn to_owned(&self) -> Result<$Frame, $crate::WireError> {
                Ok(match self {
                    $( $FrameRef::$Variant(body) => $Frame::$Variant($crate::codec::deserialize::<$Body>(body)?), )+
                })
            }

            fn check_limits(&self) -> Result<(), $crate::WireError> {
                use $crate::codec::CheckLimits;
                match self {
                    $( $FrameRef::$Variant(body) => body.check_limits(), )+
                }
            }
        }

        impl $Frame {
            /// The frame's kind.
            pub fn kind(&self) -> $Kind {
                match self {
                    $( $Frame::$Variant(_) => $Kind::$Variant, )+
                }
            }

            /// The binary form: header and archive, after checking the limits.
            pub fn encode(&self) -> Result<Vec<u8>, $crate::WireError> {
                self.check_limits()?;
                match self {
                    $( $Frame::$Variant(body) => $crate::codec::encode($Kind::$Variant as u8, body, $limit), )+
                }
            }

            /// Validates and copies a binary frame into its owned form.
            pub fn decode(bytes: &[u8]) -> Result<Self, $crate::WireError> {
                $FrameRef::access(bytes)?.to_owned()
            }

            /// Parses the JSON form of a text frame and checks its limits.
            pub fn from_json(text: &str) -> Result<Self, $crate::WireError> {
                let frame = Self::parse_json(text)?;
                frame.check_limits()?;
                Ok(frame)
            }

            /// Parses the JSON form of a text frame within the size limit, without checking
            /// the fields' limits.
            fn parse_json(text: &str) -> Result<Self, $crate::WireError> {
                if text.len() > $limit {
                    return Err($crate::WireError::TooLarge { size: text.len(), limit: $limit });
                }
                serde_json::from_str(text).map_err(|e| $crate::WireError::Json(e.to_string()))
            }

            /// The JSON form, for text frames.
            pub fn to_json(&self) -> String {
                // Serialising these plain structs to a String has no failure mode.
                serde_json::to_string(self).unwrap_or_default()
            }

            fn check_limits(&self) -> Result<(), $crate::WireError> {
                use $crate::codec::CheckLimits;
                match self {
                    $( $Frame::$Variant(body) => body.check_limits(), )+
                }
            }
        }
    };
}

pub(crate) use frame_set;

/// Implements [`CheckLimits`] alike for a body and its archive: each listed field's length
/// (bytes of a string, items of a list) must be at most its bound; `sync_page` checks a page
/// size and `chat_list_page` a chat list's; `one_direction` refuses a page asked both after a seq (non-zero) and before one;
/// each `text` field must not contain U+0000, which PostgreSQL's `text` cannot store
/// (refusing it here answers the client at once instead of failing the backend's batch).
macro_rules! limits {
    ($Body:ident, $Archived:ident $(, $field:ident <= $max:expr)* $(; sync_page $page:ident)* $(; chat_list_page $list_page:ident)? $(; one_direction $after:ident $before:ident)? $(; not_empty $ne:ident <= $ne_max:expr)? $(; text $($text:ident),+)?) => {
        impl $crate::codec::CheckLimits for $Body {
            fn check_limits(&self) -> Result<(), $crate::WireError> {
                $( $crate::limits::at_most(stringify!($field), self.$field.len(), $max)?; )*
                $( $crate::limits::sync_page(self.$page)?; )*
                $( $crate::limits::chat_list_page(self.$list_page)?; )?
                $( $crate::limits::one_direction(self.$after, self.$before.is_some())?; )?
                $( $crate::limits::not_empty(stringify!($ne), self.$ne.len(), $ne_max)?; )?
                $( $( $crate::limits::no_nul(stringify!($text), self.$text.as_bytes())?; )+ )?
                Ok(())
            }
        }
        impl $crate::codec::CheckLimits for $Archived {
            fn check_limits(&self) -> Result<(), $crate::WireError> {
                $( $crate::limits::at_most(stringify!($field), self.$field.len(), $max)?; )*
                $( $crate::limits::sync_page(self.$page.to_native())?; )*
                $( $crate::limits::chat_list_page(self.$list_page.to_native())?; )?
                $( $crate::limits::one_direction(self.$after.to_native(), self.$before.is_some())?; )?
                $( $crate::limits::not_empty(stringify!($ne), self.$ne.len(), $ne_max)?; )?
                $( $( $crate::limits::no_nul(stringify!($text), self.$text.as_bytes())?; )+ )?
                Ok(())
            }
        }
    };
}

pub(crate) use limits;
