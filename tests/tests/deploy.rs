//! The manifests in `deploy/` are valid Kubernetes objects: every document
//! deserializes into its k8s-openapi type, and nothing in it is unknown to
//! that type (k8s-openapi ignores unknown fields silently, so the document
//! is compared with the type's re-serialization: a misspelt or misplaced
//! field shows up as missing there). The DaemonSet runs the agent the way
//! the agent expects: flags it knows, `NODE_NAME` from `spec.nodeName`,
//! probes on its healthz port, the host network, bpffs from the host; the
//! ClusterRole grants what the Kubernetes source lists and watches. The
//! least-privilege variant (`deploy/least-privilege/`) runs the same agent
//! without `privileged`, with exactly the capabilities the end-to-end tests
//! run agents with ([`LEAST_PRIVILEGE_CAPABILITIES`]), and mounts what the
//! privileged container did without.
//!
//! No root needed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use nodeport_tests::LEAST_PRIVILEGE_CAPABILITIES;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every document of every `deploy/*.yaml`, with its file.
fn documents() -> Vec<(String, Value)> {
    documents_in(&deploy_dir())
}

/// The least-privilege DaemonSet.
fn least_privilege_documents() -> Vec<(String, Value)> {
    documents_in(&deploy_dir().join("least-privilege"))
}

/// Every document of every `*.yaml` in `dir`, with its file.
fn documents_in(dir: &Path) -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("deploy/ exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/");
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("readable");
        let values: Vec<Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for (i, v) in values.into_iter().enumerate() {
            if !v.is_null() {
                docs.push((format!("{} document {}", f.display(), i + 1), v));
            }
        }
    }
    docs
}

/// Paths where `original` and `reserialized` differ: fields the type does
/// not know (missing after the round trip), or values it changed.
fn differences(path: &str, original: &Value, reserialized: &Value, out: &mut Vec<String>) {
    match (original, reserialized) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => differences(&format!("{path}.{k}"), v, w, out),
                    None => out.push(format!("{path}.{k}: unknown field")),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{k}: added by the type"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                differences(&format!("{path}[{i}]"), v, w, out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: {a} became {b}")),
    }
}

/// Deserializes `doc` as `T` and checks the round trip.
fn strict<T: serde::de::DeserializeOwned + serde::Serialize>(what: &str, doc: &Value) -> T {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{what}: not a valid object: {e}"));
    let back = serde_json::to_value(&typed).expect("serializes");
    let mut diffs = Vec::new();
    differences("", doc, &back, &mut diffs);
    assert!(diffs.is_empty(), "{what}:\n{}", diffs.join("\n"));
    typed
}

#[test]
fn every_document_is_a_known_type_without_unknown_fields() {
    let mut kinds = BTreeMap::new();
    for (what, doc) in documents() {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "ServiceAccount" => drop(strict::<ServiceAccount>(&what, &doc)),
            "ClusterRole" => drop(strict::<ClusterRole>(&what, &doc)),
            "ClusterRoleBinding" => drop(strict::<ClusterRoleBinding>(&what, &doc)),
            "DaemonSet" => drop(strict::<DaemonSet>(&what, &doc)),
            other => panic!("{what}: unexpected kind {other:?}"),
        }
        *kinds.entry(kind).or_insert(0) += 1;
    }
    assert_eq!(
        kinds,
        BTreeMap::from([
            ("ClusterRole".to_owned(), 1),
            ("ClusterRoleBinding".to_owned(), 1),
            ("DaemonSet".to_owned(), 1),
            ("ServiceAccount".to_owned(), 1),
        ])
    );
    let variant = least_privilege_documents();
    assert_eq!(variant.len(), 1, "one DaemonSet in deploy/least-privilege/");
    for (what, doc) in variant {
        assert_eq!(doc["kind"], "DaemonSet", "{what}");
        drop(strict::<DaemonSet>(&what, &doc));
    }
}

#[test]
fn the_unknown_field_check_catches_mistakes() {
    let doc: Value = serde_saphyr::from_str(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\n  lables: {a: b}\n",
    )
    .unwrap();
    let caught = std::panic::catch_unwind(|| strict::<ServiceAccount>("typo", &doc))
        .expect_err("a misspelt field is reported");
    let msg = caught.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains(".metadata.lables: unknown field"), "{msg}");
}

fn find<'a>(docs: &'a [(String, Value)], kind: &str) -> &'a Value {
    &docs
        .iter()
        .find(|(_, d)| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/"))
        .1
}

#[test]
fn the_daemonset_runs_the_agent_as_it_expects() {
    let docs = documents();
    let sa = find(&docs, "ServiceAccount");
    let ds: DaemonSet = serde_json::from_value(find(&docs, "DaemonSet").clone()).unwrap();
    check_agent_pod(&ds, sa);
    let c = &ds.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(
        c.security_context.as_ref().and_then(|s| s.privileged),
        Some(true),
        "the default DaemonSet is privileged, as kube-proxy's"
    );
}

/// The least-privilege DaemonSet: the same agent, no privilege, exactly
/// the capabilities the end-to-end tests give agents, a read-only root, the
/// runtime's seccomp profile, the host's bpffs shared without Bidirectional
/// propagation (which needs privilege), a writable /proc/sys/net where
/// `--sysctl-dir` says and tracefs for the tracepoints.
#[test]
fn the_least_privilege_daemonset_runs_the_agent_with_exactly_its_capabilities() {
    let docs = documents();
    let sa = find(&docs, "ServiceAccount");
    let variant = least_privilege_documents();
    let ds: DaemonSet = serde_json::from_value(find(&variant, "DaemonSet").clone()).unwrap();
    check_agent_pod(&ds, sa);
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().expect("a securityContext");
    assert_ne!(sc.privileged, Some(true), "not privileged");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert_eq!(
        caps.add.clone().unwrap_or_default(),
        LEAST_PRIVILEGE_CAPABILITIES
            .iter()
            .map(|c| (*c).to_owned())
            .collect::<Vec<_>>(),
        "the capabilities the end-to-end tests run the agent with"
    );
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    assert!(
        mounts
            .iter()
            .all(|m| m.mount_propagation.as_deref() != Some("Bidirectional")),
        "Bidirectional propagation needs a privileged container"
    );
    let volumes = pod.volumes.unwrap_or_default();
    let host_path_of = |mount_path: &str| {
        let m = mounts
            .iter()
            .find(|m| m.mount_path == mount_path)
            .unwrap_or_else(|| panic!("a mount at {mount_path}"));
        let v = volumes
            .iter()
            .find(|v| v.name == m.name)
            .unwrap_or_else(|| panic!("volume {}", m.name));
        (
            v.host_path.as_ref().map(|h| h.path.clone()),
            m.read_only.unwrap_or(false),
        )
    };
    let args = c.args.clone().unwrap_or_default();
    let sysctl_dir = args
        .iter()
        .find_map(|a| a.strip_prefix("--sysctl-dir="))
        .expect("--sysctl-dir=DIR");
    assert_eq!(
        host_path_of(&format!("{sysctl_dir}/net")),
        (Some("/proc/sys/net".to_owned()), false),
        "the host's /proc/sys/net, writable, under --sysctl-dir"
    );
    assert_eq!(
        host_path_of("/sys/kernel/tracing").0.as_deref(),
        Some("/sys/kernel/tracing")
    );
}

/// What both DaemonSets share: the agent and how it runs.
fn check_agent_pod(ds: &DaemonSet, sa: &Value) {
    let pod = ds.clone().spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert!(
        pod.tolerations
            .unwrap_or_default()
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "tolerates every taint"
    );
    assert_eq!(
        pod.service_account_name.as_deref(),
        sa["metadata"]["name"].as_str()
    );
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("run"));

    // Every flag is one the agent knows.
    let help = std::process::Command::new(nodeport_tests::agent::agent_binary())
        .args(["run", "--help"])
        .output()
        .expect("nodeport-agent run --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in args.iter().skip(1) {
        let name = flag.split('=').next().unwrap_or_default();
        assert!(
            help.contains(name),
            "{name} is not a flag of `nodeport-agent run`:\n{help}"
        );
    }
    let env = c.env.clone().unwrap_or_default();
    let node_name = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(
        node_name
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("spec.nodeName")
    );

    // Probes on the healthz port the agent binds.
    let healthz_port: i32 = args
        .iter()
        .find_map(|a| a.strip_prefix("--healthz-bind-address="))
        .and_then(|a| a.rsplit(':').next()?.parse().ok())
        .expect("--healthz-bind-address=ADDR:PORT");
    for (probe, path) in [
        (&c.liveness_probe, "/livez"),
        (&c.readiness_probe, "/healthz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("an HTTP probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(healthz_port)
        );
    }
    let resources = c.resources.as_ref().expect("resources");
    assert!(
        resources
            .requests
            .as_ref()
            .is_some_and(|r| r.contains_key("memory"))
    );
    assert!(
        resources
            .limits
            .as_ref()
            .is_some_and(|r| r.contains_key("memory"))
    );

    // The host's bpffs, so pins outlive the container.
    let bpffs = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| {
            v.host_path
                .as_ref()
                .is_some_and(|h| h.path == "/sys/fs/bpf")
        })
        .expect("a hostPath volume for /sys/fs/bpf");
    let mount = c
        .volume_mounts
        .as_ref()
        .and_then(|m| m.iter().find(|m| m.name == bpffs.name))
        .expect("mounted");
    assert_eq!(mount.mount_path, "/sys/fs/bpf");
}

#[test]
fn the_cluster_role_grants_what_the_source_watches() {
    let docs = documents();
    let cluster_role: ClusterRole =
        serde_json::from_value(find(&docs, "ClusterRole").clone()).unwrap();
    let granted = cluster_role.rules.unwrap_or_default();
    for (group, resource) in [
        ("", "services"),
        ("", "nodes"),
        ("discovery.k8s.io", "endpointslices"),
    ] {
        let rule = granted
            .iter()
            .find(|r| {
                r.api_groups
                    .as_ref()
                    .is_some_and(|g| g.iter().any(|g| g == group))
                    && r.resources
                        .as_ref()
                        .is_some_and(|rs| rs.iter().any(|r| r == resource))
            })
            .unwrap_or_else(|| panic!("no rule for {resource}"));
        for verb in ["list", "watch"] {
            assert!(rule.verbs.iter().any(|v| v == verb), "{resource}: {verb}");
        }
        assert!(
            rule.verbs
                .iter()
                .all(|v| ["get", "list", "watch"].contains(&v.as_str())),
            "{resource}: read-only"
        );
    }
    let binding: ClusterRoleBinding =
        serde_json::from_value(find(&docs, "ClusterRoleBinding").clone()).unwrap();
    assert_eq!(binding.role_ref.name, cluster_role.metadata.name.unwrap());
    let sa = find(&docs, "ServiceAccount");
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(Some(subject.name.as_str()), sa["metadata"]["name"].as_str());
    assert_eq!(
        subject.namespace.as_deref(),
        sa["metadata"]["namespace"].as_str()
    );
}
