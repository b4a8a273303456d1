//! Cache keys: what makes two tasks "the same build".
//!
//! A key is the sha256 of a canonical encoding of everything that can change a task's
//! output: provider, repository, sha, the task's resolved spec (steps, env, image, matrix
//! values) and the digests of the artifacts it consumes. Anything not listed here must not
//! influence a build, or a cache hit could return a wrong result.
//!
//! The tenant is part of the key too: two tenants building the same public repository never
//! share results, so one tenant cannot plant a build that another one consumes.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The inputs of a task's cache key.
#[derive(Debug, Clone, Serialize)]
pub struct CacheKeyInputs<'a, S: Serialize> {
    pub tenant: &'a str,
    pub provider: &'a str,
    pub repository: &'a str,
    pub sha: &'a str,
    /// The resolved spec (steps, env, matrix values, image), after expression substitution.
    pub spec: &'a S,
    /// Digests of consumed artifacts, sorted by the caller's upstream order.
    pub consumed: &'a [String],
}

/// Version of the key derivation: bump it when the encoding changes so old entries miss.
const KEY_VERSION: &str = "gantry-cache-v1";

impl<S: Serialize> CacheKeyInputs<'_, S> {
    /// The hex sha256 of the inputs. serde_json writes struct fields in declaration order
    /// and the spec uses ordered maps, so equal inputs always give equal bytes.
    pub fn key(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(KEY_VERSION.as_bytes());
        hasher.update([0]);
        // Serialising plain data to a Vec cannot fail.
        let encoded = serde_json::to_vec(self).unwrap_or_default();
        hasher.update(&encoded);
        hex::encode(hasher.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn key(sha: &str, env: &[(&str, &str)], consumed: &[String]) -> String {
        let spec: BTreeMap<_, _> = env.iter().copied().collect();
        CacheKeyInputs {
            tenant: "t",
            provider: "git",
            repository: "r",
            sha,
            spec: &spec,
            consumed,
        }
        .key()
    }

    #[test]
    fn equal_inputs_give_equal_keys() {
        assert_eq!(key("a", &[("X", "1")], &[]), key("a", &[("X", "1")], &[]));
    }

    #[test]
    fn any_changed_input_changes_the_key() {
        let base = key("a", &[("X", "1")], &[]);
        assert_ne!(base, key("b", &[("X", "1")], &[]));
        assert_ne!(base, key("a", &[("X", "2")], &[]));
        assert_ne!(base, key("a", &[("X", "1")], &["d".into()]));
    }
}
