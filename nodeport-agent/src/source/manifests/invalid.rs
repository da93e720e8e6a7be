//! What a rejected object's reasons look like ([`FieldError`], [`Invalid`])
//! and the field checks every kind shares (port numbers, ranges, enums).
//!
//! Messages follow the API server's `field: reason` style so that operators
//! recognise them.

use std::fmt;
use std::ops::RangeInclusive;

/// One reason an object is invalid: the field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.ports[0].nodePort`; empty for the whole object.
    pub field: String,
    pub detail: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.detail)
        } else {
            write!(f, "{}: {}", self.field, self.detail)
        }
    }
}

/// Every reason an object was rejected (never empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid(pub Vec<FieldError>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

impl std::error::Error for FieldError {}

pub(crate) fn finish<T>(errors: Vec<FieldError>, value: T) -> Result<T, Invalid> {
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(Invalid(errors))
    }
}

pub(crate) fn in_port_range(port: i32) -> bool {
    (1..=65_535).contains(&port)
}

pub(crate) fn port_range_error(field: String, port: i32) -> FieldError {
    FieldError::new(
        field,
        format!("Invalid value: {port}: must be between 1 and 65535, inclusive"),
    )
}

pub(crate) fn in_node_port_range(port: i32, range: &RangeInclusive<u16>) -> bool {
    u16::try_from(port).is_ok_and(|port| range.contains(&port))
}

/// `30000-32767`.
#[must_use]
pub fn format_range(range: &RangeInclusive<u16>) -> String {
    format!("{}-{}", range.start(), range.end())
}

pub(crate) fn unsupported(field: &str, value: &str, supported: &[&str]) -> FieldError {
    let supported: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
    FieldError::new(
        field,
        format!(
            "Unsupported value: \"{value}\": supported values: {}",
            supported.join(", ")
        ),
    )
}
