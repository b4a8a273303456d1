//! Secrets: values a tenant (or one pipeline) stores for its jobs. They are encrypted
//! at rest with ChaCha20-Poly1305 under the node's key, bound to their row (tenant,
//! scope, name) as associated data so a ciphertext cannot be moved to another row, and
//! never returned by the API: a job names one with `${{ secrets.NAME }}` in an env
//! value, and the worker that leases the attempt receives the value and masks it in the
//! log.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set};

use super::auth::Scope;
use super::{Caller, Service, ServiceError};
use crate::pipeline::{PlannedTask, StepKind, expr};
use crate::store::entity::{run, secret};

/// Largest accepted secret value.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// The 256-bit key that encrypts secrets at rest.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

impl SecretKey {
    pub fn from_bytes(bytes: [u8; 32]) -> SecretKey {
        SecretKey(bytes)
    }

    /// A key written as base64 (`GANTRY_SECRET_KEY`, or the content of a key file).
    pub fn from_base64(text: &str) -> Result<SecretKey, String> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|e| format!("the secret key is not valid base64: {e}"))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "the secret key must be 32 bytes (base64 of 32 random bytes), not {}",
                b.len()
            )
        })?;
        Ok(SecretKey(arr))
    }

    /// A key file holds the base64 text of the key.
    pub fn from_file(path: &Path) -> Result<SecretKey, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("secret key file {}: {e}", path.display()))?;
        SecretKey::from_base64(&text)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
    }

    /// base64(nonce ‖ ciphertext ‖ tag), with `aad` authenticated alongside.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<String, ServiceError> {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| ServiceError::Internal("secret encryption failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend(ct);
        Ok(B64.encode(out))
    }

    pub fn open(&self, sealed: &str, aad: &[u8]) -> Result<Vec<u8>, ServiceError> {
        let bytes = B64
            .decode(sealed)
            .map_err(|_| ServiceError::Internal("corrupt secret ciphertext".into()))?;
        if bytes.len() < 12 + 16 {
            return Err(ServiceError::Internal("corrupt secret ciphertext".into()));
        }
        let (nonce, ct) = bytes.split_at(12);
        self.cipher()
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| {
                ServiceError::Internal(
                    "a secret does not decrypt: was the secret key changed?".into(),
                )
            })
    }
}

fn aad(tenant: &str, scope: &str, name: &str) -> Vec<u8> {
    format!("gantry-secret\0{tenant}\0{scope}\0{name}").into_bytes()
}

/// Input of `setSecret`.
#[derive(Debug, Clone, Default)]
pub struct SecretInput {
    /// Tenant id or name; default: the caller's (ignored when `pipeline` is given).
    pub tenant: Option<String>,
    /// A pipeline id: the secret is only visible to that pipeline's jobs.
    pub pipeline: Option<String>,
    pub name: String,
    pub value: String,
}

fn check_secret_name(name: &str) -> Result<(), ServiceError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ServiceError::BadInput(
            "secret name must be 1 to 100 letters, digits or '_', not starting with a digit".into(),
        ))
    }
}

impl Service {
    fn secret_key(&self) -> Result<&SecretKey, ServiceError> {
        self.config()
            .secret_key
            .as_deref()
            .ok_or(ServiceError::SecretKeyMissing)
    }

    /// Creates or replaces a secret. Write scope; refused without a key on the node.
    pub async fn set_secret(
        &self,
        caller: &Caller,
        input: SecretInput,
    ) -> Result<secret::Model, ServiceError> {
        caller.require(Scope::Write)?;
        check_secret_name(&input.name)?;
        if input.value.len() > MAX_SECRET_BYTES {
            return Err(ServiceError::LimitExceeded(format!(
                "a secret is at most {MAX_SECRET_BYTES} bytes"
            )));
        }
        let (tenant_id, scope) = match &input.pipeline {
            Some(p) => {
                let p = self.pipeline(caller, p).await?;
                (p.tenant_id, p.id)
            }
            None => (
                self.resolve_tenant(caller, input.tenant.as_deref())
                    .await?
                    .id,
                String::new(),
            ),
        };
        let key = self.secret_key()?;
        let sealed = key.seal(
            input.value.as_bytes(),
            &aad(&tenant_id, &scope, &input.name),
        )?;
        let now = self.now_ms();
        let db = self.store().db();
        let existing = secret::Entity::find()
            .filter(secret::Column::TenantId.eq(tenant_id.clone()))
            .filter(secret::Column::Scope.eq(scope.clone()))
            .filter(secret::Column::Name.eq(input.name.clone()))
            .one(db)
            .await?;
        Ok(match existing {
            Some(row) => {
                let mut m: secret::ActiveModel = row.into();
                m.ciphertext = Set(sealed);
                m.updated_at = Set(now);
                m.update(db).await?
            }
            None => {
                secret::ActiveModel {
                    id: Set(uuid::Uuid::now_v7().to_string()),
                    tenant_id: Set(tenant_id),
                    scope: Set(scope),
                    name: Set(input.name),
                    ciphertext: Set(sealed),
                    created_at: Set(now),
                    updated_at: Set(now),
                }
                .insert(db)
                .await?
            }
        })
    }

    /// Deletes a secret; NOT_FOUND when the caller cannot see it.
    pub async fn delete_secret(&self, caller: &Caller, id: &str) -> Result<bool, ServiceError> {
        caller.require(Scope::Write)?;
        let row = secret::Entity::find_by_id(id.to_owned())
            .one(self.store().db())
            .await?
            .filter(|s| caller.sees(&s.tenant_id))
            .ok_or(ServiceError::not_found("secret"))?;
        secret::Entity::delete_by_id(row.id)
            .exec(self.store().db())
            .await?;
        Ok(true)
    }

    /// The secrets the caller can see (names and scopes; never values).
    pub async fn secrets(
        &self,
        caller: &Caller,
        pipeline: Option<&str>,
    ) -> Result<Vec<secret::Model>, ServiceError> {
        caller.require(Scope::Read)?;
        let mut q = secret::Entity::find()
            .order_by_asc(secret::Column::Scope)
            .order_by_asc(secret::Column::Name);
        if let Some(p) = pipeline {
            let p = self.pipeline(caller, p).await?;
            q = q
                .filter(secret::Column::TenantId.eq(p.tenant_id))
                .filter(secret::Column::Scope.is_in([String::new(), p.id]));
        } else if !caller.scopes.has(Scope::Admin) {
            q = q.filter(secret::Column::TenantId.eq(caller.tenant_id.to_string()));
        }
        let mut rows = q.all(self.store().db()).await?;
        for r in &mut rows {
            r.ciphertext.clear();
        }
        Ok(rows)
    }

    /// Resolves the secret markers of a leased task: the spec handed to the worker
    /// carries the values, and the values are returned to be masked in its log. A
    /// pipeline's secret overrides the tenant's secret of the same name.
    pub(crate) async fn resolve_secrets(
        &self,
        r: &run::Model,
        spec: &mut PlannedTask,
    ) -> Result<Vec<String>, ServiceError> {
        let mut names: Vec<String> = spec
            .env
            .values()
            .chain(spec.steps.iter().flat_map(|s| s.env.values()))
            .flat_map(|v| expr::secret_markers(v))
            .collect();
        for s in &spec.steps {
            if let StepKind::Run { script, .. } = &s.kind {
                names.extend(expr::secret_markers(script));
            }
        }
        if names.is_empty() {
            return Ok(Vec::new());
        }
        names.sort();
        names.dedup();
        let rows = secret::Entity::find()
            .filter(secret::Column::TenantId.eq(r.tenant_id.clone()))
            .filter(secret::Column::Scope.is_in([String::new(), r.pipeline_id.clone()]))
            .filter(secret::Column::Name.is_in(names))
            .order_by_asc(secret::Column::Scope)
            .all(self.store().db())
            .await?;
        let mut values = BTreeMap::new();
        if !rows.is_empty() {
            let key = self.secret_key()?;
            // Ordered by scope: the tenant's ("") first, the pipeline's overrides it.
            for row in rows {
                let plain =
                    key.open(&row.ciphertext, &aad(&row.tenant_id, &row.scope, &row.name))?;
                values.insert(row.name, String::from_utf8_lossy(&plain).into_owned());
            }
        }
        let fix = |m: &mut BTreeMap<String, String>| {
            for v in m.values_mut() {
                *v = expr::resolve_secret_markers(v, &values);
            }
        };
        fix(&mut spec.env);
        fix(&mut spec.vars);
        for s in &mut spec.steps {
            fix(&mut s.env);
            if let StepKind::Run { script, .. } = &mut s.kind {
                *script = expr::resolve_secret_markers(script, &values);
            }
        }
        Ok(values.into_values().filter(|v| !v.is_empty()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_row() {
        let key = SecretKey::from_bytes([7; 32]);
        let sealed = key.seal(b"hunter2", b"row-a").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_eq!(key.open(&sealed, b"row-a").unwrap(), b"hunter2");
        assert!(key.open(&sealed, b"row-b").is_err());
        assert!(
            SecretKey::from_bytes([8; 32])
                .open(&sealed, b"row-a")
                .is_err()
        );
        // A fresh nonce each time.
        assert_ne!(sealed, key.seal(b"hunter2", b"row-a").unwrap());
    }

    #[test]
    fn keys_parse_from_base64_of_32_bytes() {
        assert!(SecretKey::from_base64(&B64.encode([1u8; 32])).is_ok());
        assert!(SecretKey::from_base64(&B64.encode([1u8; 16])).is_err());
        assert!(SecretKey::from_base64("not base64!").is_err());
        assert_eq!(
            format!("{:?}", SecretKey::from_bytes([1; 32])),
            "SecretKey(***)"
        );
    }

    #[test]
    fn secrets_plan_to_markers_in_env_only() {
        use crate::pipeline::{self, PlanContext};
        let ok = "jobs:\n  a:\n    env: { T: \"x-${{ secrets.TOKEN }}\" }\n    steps:\n      - run: echo $T ${{ env.T }}\n        env: { S: \"${{ secrets.OTHER }}\" }\n";
        let file = pipeline::parse(ok).unwrap();
        let ctx = PlanContext {
            repository: "r".into(),
            sha: "s".into(),
            r#ref: "refs/heads/m".into(),
            run_number: 1,
        };
        let mut task = pipeline::plan(&file, &ctx).unwrap().remove(0);
        let stored = serde_json::to_string(&task).unwrap();
        assert!(stored.contains("secret:TOKEN"), "{stored}");
        assert_eq!(expr::secret_markers(&task.env["T"]), ["TOKEN"]);
        let values = BTreeMap::from([("TOKEN".to_owned(), "v4lue".to_owned())]);
        task.env
            .values_mut()
            .for_each(|v| *v = expr::resolve_secret_markers(v, &values));
        assert_eq!(task.env["T"], "x-v4lue");
        for bad in [
            "jobs:\n  a:\n    steps:\n      - run: echo ${{ secrets.TOKEN }}\n",
            "jobs:\n  a:\n    if: secrets.TOKEN == 'x'\n    steps:\n      - run: echo\n",
            "jobs:\n  a:\n    runs-on: ${{ secrets.Q }}\n    steps:\n      - run: echo\n",
        ] {
            assert!(pipeline::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_names_are_identifiers() {
        assert!(check_secret_name("API_TOKEN").is_ok());
        assert!(check_secret_name("1X").is_err());
        assert!(check_secret_name("A-B").is_err());
        assert!(check_secret_name("").is_err());
    }
}
