//! The `ChatCluster` custom resource (`chat.dev/v1alpha1`, short name `cc`).
//!
//! What the OpenAPI schema cannot say is said in CEL rules (`x-kubernetes-validations`), which
//! the API server enforces and `ChatCluster::validate_cel` evaluates client-side. Every nested
//! struct writes its `Default` by hand: the derived schema embeds `Default::default()` as the
//! `default:` of the parent field, so the hand-written values are the ones the API server fills
//! in, and they must equal the per-field serde defaults.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The version of this crate; the default images carry it as their tag.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Default chat-server image repository (tag: the operator's version).
pub(crate) const SERVER_IMAGE_REPOSITORY: &str = "ghcr.io/chatcluster/chat-server";
/// Default Redis image, pinned to an exact release so that a node restarted months later runs
/// what its peers run; sentinels run `redis-server --sentinel` from the same image.
pub(crate) const DEFAULT_REDIS_IMAGE: &str = "redis:7.2.7";
/// The Sentinel master name the chat-server asks for.
pub(crate) const SENTINEL_MASTER_NAME: &str = "mymaster";

/// Desired state of a chat service: chat-server replicas and the Redis they share.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "chat.dev",
    version = "v1alpha1",
    kind = "ChatCluster",
    plural = "chatclusters",
    singular = "chatcluster",
    shortname = "cc",
    category = "chat",
    namespaced,
    status = "ChatClusterStatus",
    derive = "PartialEq",
    doc = "A horizontally scalable STOMP-over-WebSocket chat service: chat-server replicas plus the Redis (standalone or Sentinel) they cluster through.",
    cel,
    scale(
        spec_replicas_path = ".spec.server.replicas",
        status_replicas_path = ".status.serverReplicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.serverReplicas",
        description = "chat-server replicas"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyServerReplicas",
        description = "ready chat-server replicas"
    ),
    printcolumn(
        name = "Redis",
        type_ = "string",
        json_path = ".spec.redis.mode",
        description = "Redis mode"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoint",
        description = "where clients connect"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(
        "!has(self.spec.server.allowAnonymous) || self.spec.server.allowAnonymous || has(self.spec.server.jwtSecretRef)"
    )
    .message("allowAnonymous: false needs server.jwtSecretRef, or no client could connect")
)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterSpec {
    /// The chat-server Deployment.
    #[serde(default)]
    pub server: ServerSpec,
    /// The Redis the servers cluster through.
    #[serde(default)]
    pub redis: RedisSpec,
    /// The PostgreSQL message archive every server writes to. Unset: no archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveSpec>,
}

/// The PostgreSQL message archive (`CHAT_ARCHIVE_*`, docs/CONFIGURATION.md). The database is
/// one that already exists (for example a CloudNativePG cluster); the operator deploys none. It
/// reads its Secrets to check them before applying anything and to roll the servers when one
/// changes; the kubelet hands them to the servers.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveSpec {
    /// Secret key holding the `postgres://user:password@host:port/db` URL (`CHAT_ARCHIVE_URL`).
    /// For a CloudNativePG cluster `NAME`: Secret `NAME-app`, key `uri`.
    pub url_secret_ref: SecretKeyRef,
    /// Secret key holding the database password, mounted as a file
    /// (`CHAT_ARCHIVE_PASSWORD_FILE`); it replaces a password in the URL. Unset: the URL's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Records waiting for the archive, all servers together, before the oldest is dropped
    /// unarchived (`CHAT_ARCHIVE_BACKLOG`). Unset: the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1000))]
    pub backlog: Option<i64>,
    /// Records one server stores in one INSERT (`CHAT_ARCHIVE_BATCH`). Unset: the server's
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub batch: Option<i64>,
    /// TLS to PostgreSQL. Unset: the URL's `sslmode` and `sslrootcert` apply (a URL without
    /// them: `prefer`, checked against nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ArchiveTlsSpec>,
}

/// TLS to the archive (`CHAT_ARCHIVE_SSL_*`, docs/CONFIGURATION.md). For a CloudNativePG
/// cluster `NAME`: mode `verify-full` with `caSecretRef` Secret `NAME-ca`, key `ca.crt` (its
/// server certificate names `NAME-rw`, the host of the `NAME-app` Secret's `uri`).
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveTlsSpec {
    /// How the servers use TLS to PostgreSQL (`CHAT_ARCHIVE_SSL_MODE`; it replaces the URL's
    /// `sslmode`), as libpq names the modes: `disable`, `allow`, `prefer` (TLS when the server
    /// offers it), `require` (TLS, certificate not checked), `verify-ca` (certificate checked
    /// against the CA certificates), `verify-full` (and it must name the URL's host). Unset:
    /// the URL's `sslmode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "archive_ssl_mode_schema")]
    pub mode: Option<ArchiveSslMode>,
    /// Secret key holding the PEM CA certificates the server's certificate is checked against,
    /// mounted read-only as a file (`CHAT_ARCHIVE_SSL_ROOT_CERT_FILE`). Unset: the URL's
    /// `sslrootcert`, else the system's CA certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Name of a `kubernetes.io/tls` Secret (keys `tls.crt` and `tls.key`) holding the client
    /// certificate the servers present, for `cert` authentication in PostgreSQL's
    /// `pg_hba.conf` (its common name is the database user), e.g. issued by cert-manager or
    /// `kubectl cnpg certificate`. Mounted read-only (`CHAT_ARCHIVE_SSL_CERT_FILE`,
    /// `CHAT_ARCHIVE_SSL_KEY_FILE`). Unset: no client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub client_cert_secret_name: Option<String>,
}

/// The archive's TLS modes as libpq's `sslmode` spells them, the spelling
/// `CHAT_ARCHIVE_SSL_MODE` takes (chat-server's `SslMode::parse` is the authority: a test
/// checks that it accepts each of these).
pub const ARCHIVE_SSL_MODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// One of [`ARCHIVE_SSL_MODES`]: a string in the CRD (its schema an `enum` of the six, so the
/// API server refuses any other) and in the environment. Kept as the spelling rather than as a
/// Rust enum, whose variants would restate chat-server's `SslMode`: the operator only passes
/// the mode on.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchiveSslMode(&'static str);

impl ArchiveSslMode {
    /// The mode libpq spells `s`, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        ARCHIVE_SSL_MODES.into_iter().find(|m| *m == s).map(Self)
    }

    /// The libpq spelling, as `CHAT_ARCHIVE_SSL_MODE` takes it.
    pub(crate) fn as_str(self) -> &'static str {
        self.0
    }
}

impl<'de> Deserialize<'de> for ArchiveSslMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).ok_or_else(|| serde::de::Error::unknown_variant(&s, &ARCHIVE_SSL_MODES))
    }
}

/// The schema of `tls.mode`, written whole for the field: schemars would put `null` among the
/// `enum` values of an optional string it inlines, which Kubernetes has no use for.
fn archive_ssl_mode_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": ARCHIVE_SSL_MODES,
        "nullable": true,
    })
}

/// chat-server settings.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerSpec {
    /// Container image of chat-server.
    #[serde(default = "default_server_image")]
    pub image: String,
    /// Replicas when autoscaling is off (`kubectl scale cc/NAME` sets this).
    #[serde(default = "default_server_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Horizontal autoscaling on CPU; when enabled the operator leaves replicas to the HPA.
    #[serde(default)]
    pub autoscaling: AutoscalingSpec,
    /// Container resources. Unset: requests cpu 100m / memory 128Mi, limit memory 512Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Secret key holding the HS256 JWT secret (`CHAT_JWT_SECRET`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret_ref: Option<SecretKeyRef>,
    /// Whether clients without a token may connect. Unset: only when no jwtSecretRef is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_anonymous: Option<bool>,
    /// Room history kept in Redis Streams.
    #[serde(default)]
    pub history: HistorySpec,
    /// Server registry heartbeats.
    #[serde(default)]
    pub heartbeat: HeartbeatSpec,
    /// Prefix of every Redis key the servers use.
    #[serde(default = "default_key_prefix")]
    #[schemars(length(min = 1, max = 64))]
    pub key_prefix: String,
    /// Seconds a server drains its clients after SIGTERM (`CHAT_SHUTDOWN_GRACE_SECS`); the pod's
    /// termination grace period is longer.
    #[serde(default = "default_shutdown_grace_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub shutdown_grace_seconds: i64,
    /// The Service clients connect to.
    #[serde(default)]
    pub service: ServiceSpec,
    /// The PodDisruptionBudget of the servers.
    #[serde(default)]
    pub pod_disruption_budget: PodDisruptionBudgetSpec,
    /// STOMP destination patterns (`CHAT_ROOM_DESTINATIONS`, `CHAT_SEND_DESTINATIONS`), for
    /// front-ends with their own layout. Unset: the server's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destinations: Option<DestinationsSpec>,
}

/// The destinations clients SUBSCRIBE and SEND to (docs/PROTOCOL.md, Destinations). A bad
/// pattern stops the servers at start-up with a message naming the variable.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DestinationsSpec {
    /// Patterns naming a room for SUBSCRIBE and SEND, such as `/topic/chatroom/{room}` or
    /// `/topic/public` (`CHAT_ROOM_DESTINATIONS`). Empty: `/topic/room/{room}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub room: Vec<String>,
    /// SEND-only patterns, such as `/pub/chat/message/{room}` or
    /// `/app/chat.sendMessage?chatRoomId` (`CHAT_SEND_DESTINATIONS`). Empty: `/app/room/{room}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub send: Vec<String>,
}

impl Default for ServerSpec {
    fn default() -> Self {
        Self {
            image: default_server_image(),
            replicas: default_server_replicas(),
            autoscaling: AutoscalingSpec::default(),
            resources: None,
            jwt_secret_ref: None,
            allow_anonymous: None,
            history: HistorySpec::default(),
            heartbeat: HeartbeatSpec::default(),
            key_prefix: default_key_prefix(),
            shutdown_grace_seconds: default_shutdown_grace_seconds(),
            service: ServiceSpec::default(),
            pod_disruption_budget: PodDisruptionBudgetSpec::default(),
            destinations: None,
        }
    }
}

impl ServerSpec {
    /// `allowAnonymous` as the server will see it: explicit, or on when no JWT secret is set.
    pub(crate) fn effective_allow_anonymous(&self) -> bool {
        self.allow_anonymous
            .unwrap_or(self.jwt_secret_ref.is_none())
    }
}

fn default_server_image() -> String {
    format!("{SERVER_IMAGE_REPOSITORY}:{VERSION}")
}
fn default_server_replicas() -> i32 {
    2
}
fn default_key_prefix() -> String {
    "chat".to_owned()
}
fn default_shutdown_grace_seconds() -> i64 {
    20
}

/// A key in a Secret of the ChatCluster's namespace.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// CPU-based horizontal autoscaling of the servers.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas")
)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// Create a HorizontalPodAutoscaler and leave the replica count to it.
    #[serde(default)]
    pub enabled: bool,
    /// Lower bound of the HPA.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1))]
    pub min_replicas: i32,
    /// Upper bound of the HPA.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Average CPU utilisation (percent of requests) the HPA aims at.
    #[serde(
        default = "default_target_cpu",
        rename = "targetCPUUtilizationPercentage"
    )]
    #[schemars(range(min = 1, max = 1000))]
    pub target_cpu_utilization_percentage: i32,
}

impl Default for AutoscalingSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            target_cpu_utilization_percentage: default_target_cpu(),
        }
    }
}

fn default_min_replicas() -> i32 {
    2
}
fn default_max_replicas() -> i32 {
    10
}
fn default_target_cpu() -> i32 {
    70
}

/// Room history kept per room.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HistorySpec {
    /// Messages kept per room (`CHAT_HISTORY_MAX_LEN`).
    #[serde(default = "default_history_max_length")]
    #[schemars(range(min = 1))]
    pub max_length: i64,
    /// Seconds a room's history lives after its last message (`CHAT_HISTORY_TTL_SECS`).
    /// Unset: the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub ttl_seconds: Option<i64>,
}

impl Default for HistorySpec {
    fn default() -> Self {
        Self {
            max_length: default_history_max_length(),
            ttl_seconds: None,
        }
    }
}

fn default_history_max_length() -> i64 {
    1000
}

/// Server registry heartbeats: how often a server says it is alive, and after how long
/// silence the others reap its sessions.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("self.ttlMs > self.intervalMs").message("heartbeat.ttlMs must be longer than heartbeat.intervalMs")
)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatSpec {
    /// Milliseconds between heartbeats (`CHAT_HEARTBEAT_INTERVAL_MS`).
    #[serde(default = "default_heartbeat_interval")]
    #[schemars(range(min = 100))]
    pub interval_ms: i64,
    /// Milliseconds without a heartbeat before a server counts as dead (`CHAT_SERVER_TTL_MS`).
    #[serde(default = "default_heartbeat_ttl")]
    #[schemars(range(min = 200))]
    pub ttl_ms: i64,
}

impl Default for HeartbeatSpec {
    fn default() -> Self {
        Self {
            interval_ms: default_heartbeat_interval(),
            ttl_ms: default_heartbeat_ttl(),
        }
    }
}

fn default_heartbeat_interval() -> i64 {
    2000
}
fn default_heartbeat_ttl() -> i64 {
    6000
}

/// Kind of Service in front of the servers.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Through the cloud's load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The Kubernetes spelling.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// The Service clients connect to (WebSocket `/ws`, HTTP API, `/metrics`).
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Service port (the pods listen on 8080).
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Annotations of the Service (for example a cloud load balancer's settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::ClusterIP,
            port: default_service_port(),
            annotations: BTreeMap::new(),
        }
    }
}

fn default_service_port() -> i32 {
    80
}

/// The servers' PodDisruptionBudget.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodDisruptionBudgetSpec {
    /// Pods that may be down at once during voluntary disruptions (a number or a percentage).
    #[serde(default = "default_max_unavailable")]
    pub max_unavailable: IntOrString,
}

impl Default for PodDisruptionBudgetSpec {
    fn default() -> Self {
        Self {
            max_unavailable: default_max_unavailable(),
        }
    }
}

fn default_max_unavailable() -> IntOrString {
    IntOrString::Int(1)
}

/// How Redis runs.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RedisMode {
    /// One Redis node.
    #[default]
    Standalone,
    /// A master, replicas, and three or more sentinels that fail over.
    Sentinel,
}

impl RedisMode {
    /// The spelling in the spec.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Standalone => "Standalone",
            Self::Sentinel => "Sentinel",
        }
    }
}

/// How strictly sentinels are kept on different nodes.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AntiAffinity {
    /// Spread when the scheduler can (a small cluster still runs every sentinel).
    #[default]
    Preferred,
    /// Never two sentinels on one node: one node lost never costs the quorum, but a sentinel
    /// stays Pending when there are fewer nodes than sentinels.
    Required,
}

/// The CEL transition rule keeping `redis.persistence` as it was created (see `RedisSpec`).
const PERSISTENCE_IMMUTABLE: &str = "has(self.external) || has(oldSelf.external) || \
(has(self.persistence) && has(self.persistence.enabled) ? self.persistence.enabled : true) == \
(has(oldSelf.persistence) && has(oldSelf.persistence.enabled) ? oldSelf.persistence.enabled : true) && \
(has(self.persistence) && has(self.persistence.size) ? string(self.persistence.size) : '1Gi') == \
(has(oldSelf.persistence) && has(oldSelf.persistence.size) ? string(oldSelf.persistence.size) : '1Gi') && \
(has(self.persistence) && has(self.persistence.storageClassName) ? self.persistence.storageClassName : '') == \
(has(oldSelf.persistence) && has(oldSelf.persistence.storageClassName) ? oldSelf.persistence.storageClassName : '')";

/// Redis settings. With `external`, nothing is deployed and the servers use that Redis.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.mode != 'Sentinel' || has(self.external) || !has(self.sentinels) || self.sentinels >= 3").message("Sentinel mode needs at least 3 sentinels"),
    validation = Rule::new("self.mode == 'Sentinel' || !has(self.sentinels)").message("sentinels only apply in Sentinel mode"),
    validation = Rule::new("self.mode != 'Standalone' || !has(self.replicas) || self.replicas == 1").message("Standalone mode runs exactly one Redis node; use Sentinel mode for replicas"),
    validation = Rule::new("self.mode != 'Sentinel' || has(self.external) || (has(self.minReplicasToAck) ? self.minReplicasToAck : 1) <= (has(self.replicas) ? self.replicas : 3) - 1").message("minReplicasToAck must be below the number of Redis data nodes (replicas)"),
    validation = Rule::new("self.mode == 'Sentinel' || !has(self.minReplicasToAck)").message("minReplicasToAck only applies in Sentinel mode"),
    validation = Rule::new("!has(self.external) || (self.mode == 'Standalone' ? has(self.external.url) : has(self.external.sentinels))").message("external Redis needs external.url in Standalone mode and external.sentinels in Sentinel mode"),
    validation = Rule::new("!has(self.external) || !has(self.persistence.enabled) || !self.persistence.enabled").message("persistence does not apply to an external Redis"),
    // Immutable as the data StatefulSet's volumeClaimTemplates are, by meaning rather than by
    // spelling: an unset `enabled` is on (for the Redis the operator deploys; with `external`
    // nothing is deployed and nothing needs to stay), so setting `enabled: true` where it was
    // unset changes nothing and passes.
    validation = Rule::new(PERSISTENCE_IMMUTABLE).message("redis.persistence is immutable (the data StatefulSet's volumeClaimTemplates cannot change): migrate to a new ChatCluster instead"),
)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// `Standalone` or `Sentinel`; cannot change after creation.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("redis.mode is immutable"))]
    pub mode: RedisMode,
    /// Redis image; sentinels run from it too.
    #[serde(default = "default_redis_image")]
    pub image: String,
    /// Redis data nodes (master plus replicas). Unset: 1 in Standalone, 3 in Sentinel mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 9))]
    pub replicas: Option<i32>,
    /// Sentinels, Sentinel mode only. Unset: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 9))]
    pub sentinels: Option<i32>,
    /// Replicas that must hold a message before it is acknowledged (`CHAT_REDIS_MIN_REPLICAS`),
    /// Sentinel mode only. Unset: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 8))]
    pub min_replicas_to_ack: Option<i32>,
    /// Persistent volumes for Redis data; cannot change after creation (they are the data
    /// StatefulSet's volumeClaimTemplates, which Kubernetes does not let change).
    #[serde(default)]
    pub persistence: PersistenceSpec,
    /// Sentinel mode: `Required` puts every sentinel on its own node (needs at least as many
    /// schedulable nodes as sentinels), `Preferred` only prefers it. Unset: `Preferred`.
    #[serde(default)]
    pub sentinel_anti_affinity: AntiAffinity,
    /// Container resources of Redis data nodes. Unset: requests cpu 100m / memory 128Mi,
    /// limit memory 512Mi. `maxmemory` is 80 % of the memory limit (`noeviction`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Secret key holding the Redis password. Unset: the operator generates one once, in the
    /// Secret `NAME-redis-password` (key `password`), and never rotates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Use this Redis instead of deploying one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRedis>,
}

impl Default for RedisSpec {
    fn default() -> Self {
        Self {
            mode: RedisMode::Standalone,
            image: default_redis_image(),
            replicas: None,
            sentinels: None,
            min_replicas_to_ack: None,
            persistence: PersistenceSpec::default(),
            sentinel_anti_affinity: AntiAffinity::Preferred,
            resources: None,
            password_secret_ref: None,
            external: None,
        }
    }
}

impl RedisSpec {
    /// Whether the data nodes keep their data on volumes: `persistence.enabled`, unset meaning
    /// on for a Redis the operator deploys (a restart without it starts the node empty).
    pub(crate) fn persistent(&self) -> bool {
        self.persistence.enabled.unwrap_or(self.external.is_none())
    }

    /// Data nodes the operator runs (none for an external Redis).
    pub(crate) fn data_replicas(&self) -> i32 {
        match (self.external.is_some(), self.mode) {
            (true, _) => 0,
            (false, RedisMode::Standalone) => 1,
            (false, RedisMode::Sentinel) => self.replicas.unwrap_or(3),
        }
    }

    /// Sentinels the operator runs.
    pub(crate) fn sentinel_replicas(&self) -> i32 {
        match (self.external.is_some(), self.mode) {
            (false, RedisMode::Sentinel) => self.sentinels.unwrap_or(3),
            _ => 0,
        }
    }

    /// Replicas a write must reach before it is acknowledged, in Sentinel mode.
    pub(crate) fn effective_min_replicas_to_ack(&self) -> Option<i32> {
        match self.mode {
            RedisMode::Sentinel => Some(self.min_replicas_to_ack.unwrap_or(1)),
            RedisMode::Standalone => None,
        }
    }
}

fn default_redis_image() -> String {
    DEFAULT_REDIS_IMAGE.to_owned()
}

/// Persistent volumes for Redis.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PersistenceSpec {
    /// Keep Redis data on a PersistentVolumeClaim per node with an append-only file (else an
    /// emptyDir, wiped at every start). Unset: on for a Redis the operator deploys, in both
    /// modes (objects created before this default keep the `false` they were stored with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Size of each volume.
    #[serde(default = "default_persistence_size")]
    pub size: Quantity,
    /// StorageClass of the volumes. Unset: the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for PersistenceSpec {
    fn default() -> Self {
        Self {
            enabled: None,
            size: default_persistence_size(),
            storage_class_name: None,
        }
    }
}

fn default_persistence_size() -> Quantity {
    Quantity("1Gi".to_owned())
}

/// A Redis (or Redis Sentinel) the servers use instead of one the operator deploys.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRedis {
    /// `redis://host:port` (Standalone mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^rediss?://"))]
    pub url: Option<String>,
    /// `host:port` of each sentinel (Sentinel mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub sentinels: Option<Vec<String>>,
    /// Master name the sentinels know. Unset: `mymaster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_name: Option<String>,
}

/// Observed state, written by the operator.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterStatus {
    /// `Ready`, `RedisReady`, `ServersReady`, `Progressing`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// chat-server pods.
    #[serde(default)]
    pub server_replicas: i32,
    /// Ready chat-server pods.
    #[serde(default)]
    pub ready_server_replicas: i32,
    /// Label selector of the chat-server pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The Redis master the sentinels name (`host:port`), or the standalone Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_master: Option<String>,
    /// Where clients connect (`host:port` of the Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

impl ChatCluster {
    /// The CRD as YAML, exactly as `chat-operator crd` prints it and `crds/` holds it.
    pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
        use kube::CustomResourceExt;
        serde_yaml::to_string(&Self::crd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn cluster(spec: ChatClusterSpec) -> ChatCluster {
        ChatCluster::new("chat", spec)
    }

    fn sentinel_spec() -> ChatClusterSpec {
        ChatClusterSpec {
            redis: RedisSpec {
                mode: RedisMode::Sentinel,
                ..RedisSpec::default()
            },
            ..ChatClusterSpec::default()
        }
    }

    fn rejected_with(cc: &ChatCluster, needle: &str) {
        let err = cc
            .validate_cel()
            .expect_err("the CEL rules should reject this spec");
        let text = format!("{err:?}");
        assert!(text.contains(needle), "expected {needle:?} in {text}");
    }

    #[test]
    fn the_default_spec_passes_every_cel_rule() {
        cluster(ChatClusterSpec::default()).validate_cel().unwrap();
        cluster(sentinel_spec()).validate_cel().unwrap();
    }

    #[test]
    fn sentinel_mode_rejects_fewer_than_three_sentinels() {
        let mut spec = sentinel_spec();
        spec.redis.sentinels = Some(2);
        rejected_with(&cluster(spec.clone()), "at least 3 sentinels");
        spec.redis.sentinels = Some(3);
        cluster(spec).validate_cel().unwrap();
    }

    #[test]
    fn sentinels_are_rejected_in_standalone_mode() {
        let mut spec = ChatClusterSpec::default();
        spec.redis.sentinels = Some(3);
        rejected_with(&cluster(spec), "only apply in Sentinel mode");
    }

    #[test]
    fn standalone_mode_rejects_more_than_one_data_node() {
        let mut spec = ChatClusterSpec::default();
        spec.redis.replicas = Some(2);
        rejected_with(&cluster(spec), "exactly one Redis node");
    }

    #[test]
    fn min_replicas_to_ack_must_be_below_the_data_nodes() {
        let mut spec = sentinel_spec();
        spec.redis.replicas = Some(2);
        spec.redis.min_replicas_to_ack = Some(2);
        rejected_with(&cluster(spec.clone()), "minReplicasToAck must be below");
        spec.redis.min_replicas_to_ack = Some(1);
        cluster(spec.clone()).validate_cel().unwrap();
        // The defaults (1 of 3) are checked too: one data node cannot ack to a replica.
        spec.redis.min_replicas_to_ack = None;
        spec.redis.replicas = Some(1);
        rejected_with(&cluster(spec), "minReplicasToAck must be below");
    }

    #[test]
    fn redis_mode_cannot_change_after_creation() {
        let old = cluster(ChatClusterSpec::default());
        let new = cluster(sentinel_spec());
        let err = new
            .validate_cel_update(&old)
            .expect_err("mode change must be refused");
        assert!(format!("{err:?}").contains("immutable"), "{err:?}");
        old.validate_cel_update(&old).unwrap();
    }

    #[test]
    fn redis_persistence_cannot_change_after_creation() {
        let old = cluster(ChatClusterSpec::default());
        let changes: [fn(&mut PersistenceSpec); 3] = [
            |p| p.enabled = Some(false),
            |p| p.size = Quantity("5Gi".to_owned()),
            |p| p.storage_class_name = Some("fast".to_owned()),
        ];
        for change in changes {
            let mut spec = ChatClusterSpec::default();
            change(&mut spec.redis.persistence);
            let err = cluster(spec)
                .validate_cel_update(&old)
                .expect_err("a persistence change must be refused");
            assert!(
                format!("{err:?}").contains("redis.persistence is immutable"),
                "{err:?}"
            );
        }
        // Everything else in redis stays changeable.
        let mut spec = ChatClusterSpec::default();
        spec.redis.image = "redis:7.2.7".to_owned();
        cluster(spec).validate_cel_update(&old).unwrap();
    }

    #[test]
    fn spelling_out_what_persistence_already_meant_is_no_change() {
        // Created with `enabled` unset (on): saying `true` is the same, `false` is not.
        let old = cluster(ChatClusterSpec::default());
        let mut spec = ChatClusterSpec::default();
        spec.redis.persistence.enabled = Some(true);
        let explicit = cluster(spec);
        explicit.validate_cel_update(&old).unwrap();
        old.validate_cel_update(&explicit).unwrap();
        let mut spec = ChatClusterSpec::default();
        spec.redis.persistence.enabled = Some(false);
        let off = cluster(spec);
        rejected_update(&off, &old);
        rejected_update(&old, &off);
        // With an external Redis nothing is deployed: unset and `false` both mean no volumes.
        let external = |enabled| {
            let mut spec = ChatClusterSpec::default();
            spec.redis.external = Some(ExternalRedis {
                url: Some("redis://redis.example:6379".to_owned()),
                sentinels: None,
                master_name: None,
            });
            spec.redis.persistence.enabled = enabled;
            cluster(spec)
        };
        external(Some(false))
            .validate_cel_update(&external(None))
            .unwrap();
    }

    fn rejected_update(new: &ChatCluster, old: &ChatCluster) {
        let err = new
            .validate_cel_update(old)
            .expect_err("a persistence change must be refused");
        assert!(
            format!("{err:?}").contains("redis.persistence is immutable"),
            "{err:?}"
        );
    }

    #[test]
    fn persistence_is_on_unless_the_spec_says_off_and_a_stored_false_stays_off() {
        let fresh: ChatClusterSpec = serde_json::from_str("{}").unwrap();
        assert!(fresh.redis.persistent());
        let sentinel: ChatClusterSpec =
            serde_json::from_str(r#"{"redis": {"mode": "Sentinel"}}"#).unwrap();
        assert!(sentinel.redis.persistent());
        // What the previous CRD's default stored in every existing object.
        let stored: ChatClusterSpec = serde_json::from_str(
            r#"{"redis": {"persistence": {"enabled": false, "size": "1Gi"}}}"#,
        )
        .unwrap();
        assert!(!stored.redis.persistent());
    }

    #[test]
    fn autoscaling_min_replicas_may_not_exceed_max_replicas() {
        let mut spec = ChatClusterSpec::default();
        spec.server.autoscaling = AutoscalingSpec {
            enabled: true,
            min_replicas: 5,
            max_replicas: 3,
            ..AutoscalingSpec::default()
        };
        rejected_with(&cluster(spec.clone()), "minReplicas must not exceed");
        spec.server.autoscaling.max_replicas = 5;
        cluster(spec).validate_cel().unwrap();
    }

    #[test]
    fn heartbeat_ttl_must_outlast_the_interval() {
        let mut spec = ChatClusterSpec::default();
        spec.server.heartbeat = HeartbeatSpec {
            interval_ms: 5000,
            ttl_ms: 5000,
        };
        rejected_with(&cluster(spec), "ttlMs must be longer");
    }

    #[test]
    fn refusing_anonymous_clients_needs_a_jwt_secret() {
        let mut spec = ChatClusterSpec::default();
        spec.server.allow_anonymous = Some(false);
        rejected_with(&cluster(spec.clone()), "needs server.jwtSecretRef");
        spec.server.jwt_secret_ref = Some(SecretKeyRef {
            name: "jwt".into(),
            key: "secret".into(),
        });
        cluster(spec).validate_cel().unwrap();
    }

    #[test]
    fn external_redis_needs_the_address_that_fits_its_mode() {
        let mut spec = ChatClusterSpec::default();
        spec.redis.external = Some(ExternalRedis {
            url: None,
            sentinels: Some(vec!["s:26379".into()]),
            master_name: None,
        });
        rejected_with(&cluster(spec.clone()), "needs external.url");
        spec.redis.external = Some(ExternalRedis {
            url: Some("redis://redis.example:6379".into()),
            sentinels: None,
            master_name: None,
        });
        cluster(spec.clone()).validate_cel().unwrap();
        assert!(!spec.redis.persistent(), "unset: off for an external Redis");
        spec.redis.persistence.enabled = Some(false);
        cluster(spec.clone()).validate_cel().unwrap();
        spec.redis.persistence.enabled = Some(true);
        rejected_with(&cluster(spec), "persistence does not apply");
    }

    #[test]
    fn serde_defaults_equal_the_defaults_written_into_the_schema() {
        let from_empty: ChatClusterSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(from_empty, ChatClusterSpec::default());
        let from_empty_parts: ChatClusterSpec =
            serde_json::from_str(r#"{"server": {}, "redis": {"persistence": {}}}"#).unwrap();
        assert_eq!(from_empty_parts, ChatClusterSpec::default());

        let crd = serde_json::to_value(ChatCluster::crd()).unwrap();
        let spec_props = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"];
        assert_eq!(
            spec_props["server"]["default"],
            serde_json::to_value(ServerSpec::default()).unwrap()
        );
        assert_eq!(
            spec_props["redis"]["default"],
            serde_json::to_value(RedisSpec::default()).unwrap()
        );
    }

    #[test]
    fn an_archive_tls_mode_other_than_libpq_s_six_is_refused_by_the_schema_and_by_serde() {
        // The API server refuses a value outside the schema's enum; serde refuses the same
        // values wherever the operator reads a manifest itself (`chat-operator render`).
        let crd = serde_json::to_value(ChatCluster::crd()).unwrap();
        let tls = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["archive"]["properties"]["tls"]["properties"];
        assert_eq!(tls["mode"]["enum"], serde_json::json!(ARCHIVE_SSL_MODES));
        assert_eq!(
            tls["caSecretRef"]["required"],
            serde_json::json!(["key", "name"])
        );
        for spelling in ARCHIVE_SSL_MODES {
            let mode = ArchiveSslMode::parse(spelling).unwrap();
            assert_eq!(mode.as_str(), spelling);
            assert_eq!(serde_json::to_value(mode).unwrap(), spelling);
        }

        let spec = |mode: &str| {
            serde_json::from_str::<ChatClusterSpec>(&format!(
                r#"{{"archive": {{"urlSecretRef": {{"name": "pg-app", "key": "uri"}},
                    "tls": {{"mode": "{mode}"}}}}}}"#
            ))
        };
        let archive = spec("verify-full").unwrap().archive.unwrap();
        assert_eq!(
            archive.tls.and_then(|t| t.mode),
            ArchiveSslMode::parse("verify-full")
        );
        for bad in ["verify_full", "VERIFY-FULL", "VerifyFull", "ssl", ""] {
            let err = spec(bad).expect_err("a mode libpq does not name must be refused");
            assert!(err.to_string().contains("unknown variant"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_crd_has_status_and_scale_subresources_and_printer_columns() {
        let crd = ChatCluster::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("chatclusters.chat.dev"));
        assert_eq!(crd.spec.names.short_names, Some(vec!["cc".to_owned()]));
        let version = &crd.spec.versions[0];
        let sub = version.subresources.as_ref().unwrap();
        assert!(sub.status.is_some());
        let scale = sub.scale.as_ref().unwrap();
        assert_eq!(scale.spec_replicas_path, ".spec.server.replicas");
        assert_eq!(scale.status_replicas_path, ".status.serverReplicas");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Replicas", "Ready", "Redis", "Endpoint", "Age"]);
    }

    #[test]
    fn the_committed_crd_files_match_the_generated_crd() {
        let generated = ChatCluster::crd_yaml().unwrap();
        let regenerate = "regenerate: cargo run -q -p chat-operator -- crd > crds/chatclusters.chat.dev.yaml \
                          && cp crds/chatclusters.chat.dev.yaml charts/chat-operator/crds/";
        assert!(
            include_str!("../../crds/chatclusters.chat.dev.yaml") == generated,
            "crds/ drifted; {regenerate}"
        );
        assert!(
            include_str!("../../charts/chat-operator/crds/chatclusters.chat.dev.yaml") == generated,
            "the chart's CRD drifted; {regenerate}"
        );
    }

    #[test]
    fn default_images_carry_the_crate_version() {
        assert_eq!(
            ServerSpec::default().image,
            format!("ghcr.io/chatcluster/chat-server:{VERSION}")
        );
        assert_eq!(RedisSpec::default().image, "redis:7.2.7");
    }

    #[test]
    fn data_and_sentinel_counts_follow_the_mode() {
        let standalone = RedisSpec::default();
        assert_eq!(
            (standalone.data_replicas(), standalone.sentinel_replicas()),
            (1, 0)
        );
        let sentinel = sentinel_spec().redis;
        assert_eq!(
            (sentinel.data_replicas(), sentinel.sentinel_replicas()),
            (3, 3)
        );
        assert_eq!(sentinel.effective_min_replicas_to_ack(), Some(1));
        let external = RedisSpec {
            external: Some(ExternalRedis {
                url: Some("redis://x:6379".into()),
                sentinels: None,
                master_name: None,
            }),
            ..RedisSpec::default()
        };
        assert_eq!(
            (external.data_replicas(), external.sentinel_replicas()),
            (0, 0)
        );
    }
}
