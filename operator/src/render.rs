//! `chat-operator render`: the objects the operator would apply for ChatCluster manifests.
//!
//! The output is a YAML stream for review and for validation against the Kubernetes schemas.
//! It includes the password Secret with a fresh random password, as on first creation, and a
//! placeholder owner uid when the manifest has none (the API server assigns the real one).

use kube::api::ObjectMeta;
use serde::Deserialize;

use crate::crd::ChatCluster;
use crate::error::{Error, Result};
use crate::resources::{self, generates_password, secret};

/// The uid owner references get when the manifest has none.
pub(crate) const PLACEHOLDER_UID: &str = "00000000-0000-0000-0000-000000000000";

/// Every ChatCluster in a (multi-document) YAML text. Documents of other kinds are skipped.
pub(crate) fn parse_clusters(yaml: &str) -> Result<Vec<ChatCluster>> {
    let mut clusters = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(doc)?;
        if value.is_null() || value.get("kind").and_then(|k| k.as_str()) != Some("ChatCluster") {
            continue;
        }
        clusters.push(serde_yaml::from_value(value)?);
    }
    Ok(clusters)
}

/// Check a ChatCluster against the CRD's CEL rules, as the API server would.
pub(crate) fn validate(cc: &ChatCluster) -> Result<()> {
    cc.validate_cel()
        .map_err(|e| Error::InvalidSpec(format!("{e:?}")))?;
    crate::resources::redis::maxmemory(cc).map_err(Error::InvalidSpec)?;
    crate::resources::server::check_with_servers_parser(cc).map_err(Error::InvalidSpec)?;
    Ok(())
}

/// The objects for `cc`, in apply order, as JSON values.
pub(crate) fn render_cluster(
    cc: &ChatCluster,
    operator_namespace: &str,
) -> Result<Vec<serde_json::Value>> {
    validate(cc)?;
    let mut cc = cc.clone();
    let meta: &mut ObjectMeta = &mut cc.metadata;
    if meta.name.is_none() {
        return Err(Error::MissingObjectKey("metadata.name"));
    }
    meta.namespace.get_or_insert_with(|| "default".to_owned());
    meta.uid.get_or_insert_with(|| PLACEHOLDER_UID.to_owned());
    let mut out = Vec::new();
    if generates_password(&cc) {
        let secret = secret::redis_password_secret(&cc, &secret::generate_password());
        out.push(serde_json::to_value(secret)?);
    }
    out.extend(resources::children(&cc, operator_namespace).to_values()?);
    Ok(out)
}

/// Render every ChatCluster in `yaml` into one YAML stream.
pub fn render(yaml: &str, operator_namespace: &str) -> Result<String> {
    let mut docs = Vec::new();
    for cc in parse_clusters(yaml)? {
        for value in render_cluster(&cc, operator_namespace)? {
            docs.push(serde_yaml::to_string(&value)?);
        }
    }
    Ok(docs.iter().map(|d| format!("---\n{d}")).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ChatCluster with an empty spec section, to append fields to.
    const MANIFEST_HEAD: &str = "\
apiVersion: chat.dev/v1alpha1
kind: ChatCluster
metadata:
  name: demo
spec:
";

    const MANIFEST: &str = "\
apiVersion: chat.dev/v1alpha1
kind: ChatCluster
metadata:
  name: demo
spec:
  redis:
    mode: Sentinel
---
apiVersion: v1
kind: Namespace
metadata:
  name: ignored
";

    #[test]
    fn render_prints_the_secret_and_every_child_of_each_cluster() {
        let out = render(MANIFEST, "chat-operator").unwrap();
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&out)
            .map(|d| serde_yaml::Value::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs[0]["kind"], "Secret");
        assert_eq!(docs.len(), 15);
        assert!(docs.iter().all(|d| d["metadata"]["namespace"] == "default"));
        assert!(
            docs.iter()
                .all(|d| d["metadata"]["ownerReferences"][0]["uid"] == PLACEHOLDER_UID)
        );
    }

    #[test]
    fn render_refuses_a_spec_the_servers_would_refuse_at_start_up() {
        let bad = format!(
            "{MANIFEST_HEAD}  archive:\n    urlSecretRef: {{name: pg-app, key: uri}}\n    backlog: 500\n"
        );
        let err = render(&bad, "chat-operator").unwrap_err();
        assert!(matches!(err, Error::InvalidSpec(_)), "{err}");
        assert!(err.to_string().contains("CHAT_ARCHIVE_BACKLOG"), "{err}");
        let good = bad.replace("backlog: 500", "backlog: 5000");
        render(&good, "chat-operator").unwrap();
    }

    #[test]
    fn render_refuses_a_spec_the_cel_rules_reject() {
        let bad = MANIFEST.replace("mode: Sentinel", "mode: Sentinel\n    sentinels: 2");
        let err = render(&bad, "chat-operator").unwrap_err();
        assert!(matches!(err, Error::InvalidSpec(_)), "{err}");
    }
}

#[cfg(test)]
mod examples {
    use super::*;

    const EXAMPLES: &[(&str, &str)] = &[
        ("standalone", include_str!("../../examples/standalone.yaml")),
        ("sentinel", include_str!("../../examples/sentinel.yaml")),
        (
            "autoscaling",
            include_str!("../../examples/autoscaling.yaml"),
        ),
        (
            "external-redis",
            include_str!("../../examples/external-redis.yaml"),
        ),
        ("spring", include_str!("../../examples/spring.yaml")),
        ("archive", include_str!("../../examples/archive.yaml")),
    ];

    #[test]
    fn every_example_deserializes_into_one_chat_cluster_that_passes_the_cel_rules() {
        for (name, yaml) in EXAMPLES {
            let clusters = parse_clusters(yaml).unwrap();
            assert_eq!(clusters.len(), 1, "{name}");
            validate(&clusters[0]).unwrap_or_else(|e| panic!("{name}: {e}"));
            render(yaml, "chat-operator").unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn the_autoscaling_example_renders_an_hpa_and_no_deployment_replicas() {
        let objects = render_cluster(&parse_clusters(EXAMPLES[2].1).unwrap()[0], "ops").unwrap();
        assert!(
            objects
                .iter()
                .any(|o| o["kind"] == "HorizontalPodAutoscaler")
        );
        let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
        assert!(deployment["spec"].get("replicas").is_none());
    }

    #[test]
    fn the_archive_example_reads_the_url_and_the_ca_from_the_cloudnativepg_secrets() {
        let objects = render_cluster(&parse_clusters(EXAMPLES[5].1).unwrap()[0], "ops").unwrap();
        let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
        let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap();
        let url = env
            .iter()
            .find(|e| e["name"] == "CHAT_ARCHIVE_URL")
            .unwrap();
        assert_eq!(url["valueFrom"]["secretKeyRef"]["name"], "chat-pg-app");
        assert_eq!(url["valueFrom"]["secretKeyRef"]["key"], "uri");
        assert!(env.iter().any(|e| e["name"] == "CHAT_ARCHIVE_BACKLOG"));
        let mode = env
            .iter()
            .find(|e| e["name"] == "CHAT_ARCHIVE_SSL_MODE")
            .unwrap();
        assert_eq!(mode["value"], "verify-full");
        let ca = deployment["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "archive-ca")
            .unwrap();
        assert_eq!(ca["secret"]["secretName"], "chat-pg-ca");
        assert_eq!(ca["secret"]["items"][0]["key"], "ca.crt");
    }

    #[test]
    fn the_spring_example_sets_the_layout_s_destinations_on_the_servers() {
        let objects = render_cluster(&parse_clusters(EXAMPLES[4].1).unwrap()[0], "ops").unwrap();
        let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
        let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap();
        let value = |name: &str| {
            env.iter()
                .find(|e| e["name"] == name)
                .and_then(|e| e["value"].as_str())
                .map(str::to_owned)
        };
        assert_eq!(
            value("CHAT_ROOM_DESTINATIONS").as_deref(),
            Some("/topic/chatroom/{room}")
        );
        assert_eq!(
            value("CHAT_SEND_DESTINATIONS").as_deref(),
            Some("/app/chat.sendMessage?chatRoomId")
        );
    }
}
