//! The API server's name rules: RFC 1123 labels and subdomains, DNS-1035
//! labels, IANA service names, and the checks of `metadata.name` and
//! `metadata.namespace` built on them.

use super::invalid::FieldError;

/// Namespace of namespaced objects that do not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

pub(crate) const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character, at most 63 characters";
pub(crate) const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character, at most 63 characters";
pub(crate) const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character, at most 253 characters";
pub(crate) const IANA_SVC_NAME_MSG: &str = "must be a port number or an IANA_SVC_NAME: at most 15 lower case alphanumeric characters or '-', with at least one letter, not starting or ending with '-' and without '--'";

fn is_label_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'
}

/// An RFC 1123 label: namespaces, port names.
#[must_use]
pub fn is_dns1123_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|&c| is_label_char(c))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// A DNS-1035 label (starts with a letter): Service names.
#[must_use]
pub fn is_dns1035_label(name: &str) -> bool {
    is_dns1123_label(name) && name.as_bytes()[0].is_ascii_lowercase()
}

/// An RFC 1123 subdomain: `EndpointSlice` and Node names.
#[must_use]
pub fn is_dns1123_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes.iter().all(|&c| is_label_char(c))
                && bytes[0].is_ascii_alphanumeric()
                && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        })
}

/// An IANA service name: named `targetPort`s.
#[must_use]
pub fn is_iana_svc_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 15
        && bytes.iter().all(|&c| is_label_char(c))
        && bytes.iter().any(u8::is_ascii_lowercase)
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
        && !name.contains("--")
}

pub(crate) fn check_name(
    errors: &mut Vec<FieldError>,
    field: &str,
    name: Option<&str>,
    valid: fn(&str) -> bool,
    message: &str,
) {
    match name {
        None | Some("") => errors.push(FieldError::new(field, "Required value: name is required")),
        Some(name) if !valid(name) => {
            errors.push(FieldError::new(
                field,
                format!("Invalid value: \"{name}\": {message}"),
            ));
        }
        Some(_) => {}
    }
}

pub(crate) fn check_namespace(errors: &mut Vec<FieldError>, namespace: Option<&str>) {
    if let Some(namespace) = namespace
        && !is_dns1123_label(namespace)
    {
        errors.push(FieldError::new(
            "metadata.namespace",
            format!("Invalid value: \"{namespace}\": {DNS1123_LABEL_MSG}"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_checks() {
        assert!(is_iana_svc_name("http"));
        assert!(is_iana_svc_name("h2-c"));
        assert!(!is_iana_svc_name("8080"));
        assert!(!is_iana_svc_name("a--b"));
        assert!(!is_iana_svc_name("-http"));
        assert!(!is_iana_svc_name("abcdefghijklmnop"));
        assert!(is_dns1035_label("web-1"));
        assert!(!is_dns1035_label("1web"));
        assert!(is_dns1123_label("1web"));
        assert!(is_dns1123_subdomain("node-1.example"));
        assert!(!is_dns1123_subdomain("node..1"));
    }
}
