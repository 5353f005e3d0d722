//! Versioned JSON records: every stored value carries a `v` schema version, unknown fields
//! are ignored, and older versions are upgraded on read (see docs/storage.md).

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RecordError {
    #[error("record is not a json object: {0}")]
    Malformed(String),
    #[error("record has no schema version field \"v\"")]
    MissingVersion,
    #[error("record of {kind} at schema version {found} cannot be upgraded to {current}")]
    NoUpgrade {
        kind: &'static str,
        found: u32,
        current: u32,
    },
    #[error("record of {kind} does not match its schema: {message}")]
    Schema { kind: &'static str, message: String },
}

/// A type stored as a versioned JSON record.
///
/// Rules that keep rolling updates safe: a new version may only add fields that have a
/// default (`#[serde(default)]`), so an older replica reading a newer record ignores what it
/// does not know. A breaking change bumps `VERSION` and implements [`Record::upgrade`] for
/// the older shapes; records are rewritten lazily on their next update.
pub trait Record: Serialize + DeserializeOwned {
    /// Name used in errors and logs.
    const KIND: &'static str;
    /// Current schema version written by this build.
    const VERSION: u32;

    /// Turns a record written at `version` (< `VERSION`) into the current shape.
    fn upgrade(version: u32, value: Value) -> Result<Value, RecordError> {
        let _ = value;
        Err(RecordError::NoUpgrade {
            kind: Self::KIND,
            found: version,
            current: Self::VERSION,
        })
    }

    /// Serialises with the `v` field set to `VERSION`.
    fn to_bytes(&self) -> Result<Bytes, RecordError> {
        let mut value = serde_json::to_value(self).map_err(|err| RecordError::Schema {
            kind: Self::KIND,
            message: err.to_string(),
        })?;
        let Value::Object(map) = &mut value else {
            return Err(RecordError::Malformed(format!(
                "{} does not serialise to an object",
                Self::KIND
            )));
        };
        map.insert("v".to_string(), Value::from(Self::VERSION));
        serde_json::to_vec(&value)
            .map(Bytes::from)
            .map_err(|err| RecordError::Malformed(err.to_string()))
    }

    /// Parses a record of any known version; newer versions are read as far as understood.
    fn from_bytes(bytes: &[u8]) -> Result<Self, RecordError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|err| RecordError::Malformed(err.to_string()))?;
        let version = value
            .get("v")
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or(RecordError::MissingVersion)?;
        let value = if version < Self::VERSION {
            Self::upgrade(version, value)?
        } else {
            value
        };
        serde_json::from_value(value).map_err(|err| RecordError::Schema {
            kind: Self::KIND,
            message: err.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct UserV2 {
        id: String,
        #[serde(default)]
        display_name: String,
    }

    impl Record for UserV2 {
        const KIND: &'static str = "user";
        const VERSION: u32 = 2;

        fn upgrade(version: u32, mut value: Value) -> Result<Value, RecordError> {
            match version {
                1 => {
                    // v1 called the field "name"
                    if let Some(map) = value.as_object_mut()
                        && let Some(name) = map.remove("name")
                    {
                        map.insert("display_name".into(), name);
                    }
                    Ok(value)
                }
                _ => Err(RecordError::NoUpgrade {
                    kind: Self::KIND,
                    found: version,
                    current: Self::VERSION,
                }),
            }
        }
    }

    #[test]
    fn round_trip_sets_the_version() {
        let user = UserV2 {
            id: "u1".into(),
            display_name: "Ada".into(),
        };
        let bytes = user.to_bytes().unwrap();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["v"], 2);
        assert_eq!(UserV2::from_bytes(&bytes).unwrap(), user);
    }

    #[test]
    fn newer_records_with_unknown_fields_are_read() {
        let bytes = br#"{"v":3,"id":"u1","display_name":"Ada","mfa":{"kind":"webauthn"}}"#;
        let user = UserV2::from_bytes(bytes).unwrap();
        assert_eq!(user.display_name, "Ada");
    }

    #[test]
    fn older_records_are_upgraded() {
        let user = UserV2::from_bytes(br#"{"v":1,"id":"u1","name":"Ada"}"#).unwrap();
        assert_eq!(user.display_name, "Ada");
        assert!(matches!(
            UserV2::from_bytes(br#"{"v":0,"id":"u1"}"#),
            Err(RecordError::NoUpgrade { found: 0, .. })
        ));
    }

    #[test]
    fn bad_records_are_typed_errors() {
        assert_eq!(
            UserV2::from_bytes(br#"{"id":"u1"}"#),
            Err(RecordError::MissingVersion)
        );
        assert!(matches!(
            UserV2::from_bytes(b"{\"v\":2"),
            Err(RecordError::Malformed(_))
        ));
        assert!(matches!(
            UserV2::from_bytes(br#"{"v":2,"id":7}"#),
            Err(RecordError::Schema { .. })
        ));
    }
}
