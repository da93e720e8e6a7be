//! EndpointSlices as the API server defaults and validates them:
//! [`normalize_endpoint_slice`], then [`validate_endpoint_slice`], which also
//! says the address type (only IPv4 slices are served).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::invalid::{FieldError, Invalid, in_port_range, port_range_error, unsupported};
use super::names::{
    DEFAULT_NAMESPACE, DNS1035_LABEL_MSG, DNS1123_LABEL_MSG, DNS1123_SUBDOMAIN_MSG, check_name,
    check_namespace, is_dns1035_label, is_dns1123_label, is_dns1123_subdomain,
};
use super::service::Protocol;

/// Label that ties an `EndpointSlice` to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Most addresses one endpoint of an `EndpointSlice` may carry.
const MAX_ENDPOINT_ADDRESSES: usize = 100;

/// `addressType` of an `EndpointSlice`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressType {
    Ipv4,
    Ipv6,
    Fqdn,
}

impl AddressType {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ipv4 => "IPv4",
            Self::Ipv6 => "IPv6",
            Self::Fqdn => "FQDN",
        }
    }
}

/// Applies the API server's defaults to an `EndpointSlice`: namespace
/// `default`, port protocol `TCP`.
pub fn normalize_endpoint_slice(slice: &mut EndpointSlice) {
    if slice
        .metadata
        .namespace
        .as_deref()
        .is_none_or(str::is_empty)
    {
        slice.metadata.namespace = Some(DEFAULT_NAMESPACE.to_owned());
    }
    for port in slice.ports.iter_mut().flatten() {
        port.protocol
            .get_or_insert_with(|| Protocol::Tcp.as_str().to_owned());
    }
}

/// Checks one `EndpointSlice`, after [`normalize_endpoint_slice`], and returns
/// its address type (the datapath serves only [`AddressType::Ipv4`]).
pub fn validate_endpoint_slice(slice: &EndpointSlice) -> Result<AddressType, Invalid> {
    let mut errors = Vec::new();
    check_name(
        &mut errors,
        "metadata.name",
        slice.metadata.name.as_deref(),
        is_dns1123_subdomain,
        DNS1123_SUBDOMAIN_MSG,
    );
    check_namespace(&mut errors, slice.metadata.namespace.as_deref());
    match slice
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
    {
        None => errors.push(FieldError::new(
            "metadata.labels",
            format!("Required value: label {SERVICE_NAME_LABEL} must name the Service this slice belongs to"),
        )),
        Some(name) if !is_dns1035_label(name) => errors.push(FieldError::new(
            format!("metadata.labels[{SERVICE_NAME_LABEL}]"),
            format!("Invalid value: \"{name}\": {DNS1035_LABEL_MSG}"),
        )),
        Some(_) => {}
    }

    let address_type = match slice.address_type.as_str() {
        "IPv4" => Some(AddressType::Ipv4),
        "IPv6" => Some(AddressType::Ipv6),
        "FQDN" => Some(AddressType::Fqdn),
        "" => {
            errors.push(FieldError::new("addressType", "Required value"));
            None
        }
        other => {
            errors.push(unsupported("addressType", other, &["FQDN", "IPv4", "IPv6"]));
            None
        }
    };

    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        let at = format!("endpoints[{i}]");
        if endpoint.addresses.is_empty() || endpoint.addresses.len() > MAX_ENDPOINT_ADDRESSES {
            errors.push(FieldError::new(
                format!("{at}.addresses"),
                format!(
                    "Invalid value: must contain between 1 and {MAX_ENDPOINT_ADDRESSES} addresses"
                ),
            ));
        }
        for (j, address) in endpoint.addresses.iter().enumerate() {
            let valid = match address_type {
                Some(AddressType::Ipv4) => address.parse::<Ipv4Addr>().is_ok(),
                Some(AddressType::Ipv6) => address.parse::<Ipv6Addr>().is_ok(),
                Some(AddressType::Fqdn) => is_dns1123_subdomain(address),
                None => true,
            };
            if !valid && let Some(address_type) = address_type {
                errors.push(FieldError::new(
                    format!("{at}.addresses[{j}]"),
                    format!(
                        "Invalid value: \"{address}\": must be a valid {} address",
                        address_type.as_str()
                    ),
                ));
            }
        }
        if let Some(node) = endpoint.node_name.as_deref()
            && !is_dns1123_subdomain(node)
        {
            errors.push(FieldError::new(
                format!("{at}.nodeName"),
                format!("Invalid value: \"{node}\": {DNS1123_SUBDOMAIN_MSG}"),
            ));
        }
    }

    validate_endpoint_ports(&mut errors, slice);

    match address_type {
        Some(address_type) if errors.is_empty() => Ok(address_type),
        _ => Err(Invalid(errors)),
    }
}

fn validate_endpoint_ports(errors: &mut Vec<FieldError>, slice: &EndpointSlice) {
    let mut names = BTreeSet::new();
    for (i, port) in slice.ports.iter().flatten().enumerate() {
        let at = format!("ports[{i}]");
        if let Some(number) = port.port
            && !in_port_range(number)
        {
            errors.push(port_range_error(format!("{at}.port"), number));
        }
        if Protocol::from_field(port.protocol.as_deref()).is_none() {
            errors.push(unsupported(
                &format!("{at}.protocol"),
                port.protocol.as_deref().unwrap_or_default(),
                &["SCTP", "TCP", "UDP"],
            ));
        }
        let name = port.name.as_deref().unwrap_or_default();
        if !name.is_empty() && !is_dns1123_label(name) {
            errors.push(FieldError::new(
                format!("{at}.name"),
                format!("Invalid value: \"{name}\": {DNS1123_LABEL_MSG}"),
            ));
        }
        if !names.insert(name) {
            errors.push(FieldError::new(
                format!("{at}.name"),
                format!("Duplicate value: \"{name}\""),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::Endpoint;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn slice(address_type: &str, addresses: &[&str], labelled: bool) -> EndpointSlice {
        let mut slice = EndpointSlice {
            metadata: ObjectMeta {
                name: Some("web-abc".to_owned()),
                labels: labelled
                    .then(|| [(SERVICE_NAME_LABEL.to_owned(), "web".to_owned())].into()),
                ..ObjectMeta::default()
            },
            address_type: address_type.to_owned(),
            endpoints: vec![Endpoint {
                addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
                ..Endpoint::default()
            }],
            ports: None,
        };
        normalize_endpoint_slice(&mut slice);
        slice
    }

    #[test]
    fn endpoint_slices() {
        assert_eq!(
            validate_endpoint_slice(&slice("IPv4", &["10.1.0.5"], true)),
            Ok(AddressType::Ipv4)
        );
        assert_eq!(
            validate_endpoint_slice(&slice("IPv6", &["fd00::5"], true)),
            Ok(AddressType::Ipv6)
        );
        let message = validate_endpoint_slice(&slice("IPv4", &["10.1.0.300"], false))
            .expect_err("invalid")
            .to_string();
        assert!(
            message.contains("label kubernetes.io/service-name"),
            "{message}"
        );
        assert!(
            message.contains("endpoints[0].addresses[0]: Invalid value: \"10.1.0.300\""),
            "{message}"
        );
        let message = validate_endpoint_slice(&slice("IPX", &["10.1.0.5"], true))
            .expect_err("invalid")
            .to_string();
        assert!(
            message.contains("addressType: Unsupported value: \"IPX\""),
            "{message}"
        );
    }
}
