//! Nodes: cluster-scoped, valid with a valid name.

use k8s_openapi::api::core::v1::Node;

use super::invalid::{Invalid, finish};
use super::names::{DNS1123_SUBDOMAIN_MSG, check_name, is_dns1123_subdomain};

/// Nodes are cluster-scoped: a namespace in a manifest is dropped.
pub fn normalize_node(node: &mut Node) {
    node.metadata.namespace = None;
}

/// Checks one Node: it needs a valid name.
pub fn validate_node(node: &Node) -> Result<(), Invalid> {
    let mut errors = Vec::new();
    check_name(
        &mut errors,
        "metadata.name",
        node.metadata.name.as_deref(),
        is_dns1123_subdomain,
        DNS1123_SUBDOMAIN_MSG,
    );
    finish(errors, ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn nodes_need_a_name() {
        assert!(validate_node(&Node::default()).is_err());
        let node = Node {
            metadata: ObjectMeta {
                name: Some("node-a".to_owned()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        assert_eq!(validate_node(&node), Ok(()));
    }
}
