//! The generated Redis password Secret: created once, never re-generated while it exists.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rand::Rng;
use rand::distr::Alphanumeric;

use super::{Component, Names, PASSWORD_KEY, meta};
use crate::crd::ChatCluster;

/// Pod-template annotation with a checksum of the password Secret's data: a changed password
/// changes the template and so rolls the data nodes, sentinels and servers onto it.
pub(crate) const SECRET_CHECKSUM_ANNOTATION: &str = "chat.dev/secret-checksum";

/// Server pod-template annotation with a checksum of the archive Secrets' identities (uid and
/// resourceVersion, never their values): an edited URL, password, CA or client Secret rolls the
/// servers, which read them only at start-up.
pub(crate) const ARCHIVE_SECRETS_ANNOTATION: &str = "chat.dev/archive-secrets";

/// Length of generated passwords (alphanumeric, about 190 bits).
pub(crate) const PASSWORD_LEN: usize = 32;

/// A fresh random password.
pub(crate) fn generate_password() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(PASSWORD_LEN)
        .map(char::from)
        .collect()
}

/// The Secret `NAME-redis-password` holding `password`. The reconciler creates it only when it
/// does not exist, so a password is never rotated by accident.
pub(crate) fn redis_password_secret(cc: &ChatCluster, password: &str) -> Secret {
    Secret {
        metadata: meta(cc, Names::of(cc).redis_password(), Component::Redis),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            PASSWORD_KEY.to_owned(),
            ByteString(password.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// The checksum [`SECRET_CHECKSUM_ANNOTATION`] carries: of the key and the password, never the
/// password itself (annotations are readable by anyone who can read the pods).
pub(crate) fn password_checksum(key: &str, password: &str) -> String {
    super::config_map::fnv_hex(std::iter::once((key.as_bytes(), password.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::standalone;

    #[test]
    fn generated_passwords_are_long_alphanumeric_and_different() {
        let a = generate_password();
        let b = generate_password();
        assert_eq!(a.len(), PASSWORD_LEN);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn the_password_secret_is_owned_by_the_cluster_and_holds_the_password() {
        let s = redis_password_secret(&standalone(), "hunter2");
        assert_eq!(s.metadata.name.as_deref(), Some("chat-redis-password"));
        assert!(s.metadata.owner_references.is_some());
        assert_eq!(s.data.unwrap()["password"].0, b"hunter2");
    }

    #[test]
    fn the_secret_checksum_follows_the_password_and_does_not_contain_it() {
        let a = password_checksum("password", "hunter2");
        assert_eq!(a, password_checksum("password", "hunter2"));
        assert_ne!(a, password_checksum("password", "hunter3"));
        assert!(!a.contains("hunter2"));
    }
}
