//! Who is calling: API tokens, their scopes and their tenant.
//!
//! Tokens are random 32-byte secrets shown once; only their sha256 is stored. Every use
//! case takes a [`Caller`] and checks it here, so no surface can forget a check.

use std::fmt;

use rand::RngCore;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set};
use sha2::{Digest, Sha256};

use super::{Service, ServiceError};
use crate::domain::{TenantId, TokenId};
use crate::store::entity::{api_token, tenant};

/// One permission of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Queries and subscriptions.
    Read,
    /// Triggering, cancelling, retrying; creating pipelines.
    Write,
    /// Tenants, tokens and every tenant's objects.
    Admin,
    /// The worker calls: register, lease, heartbeat, log, complete.
    Agent,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Write, Scope::Admin, Scope::Agent];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
            Scope::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    pub fn all() -> Scopes {
        Scope::ALL.iter().fold(Scopes(0), |s, x| s.with(*x))
    }

    pub fn with(self, scope: Scope) -> Scopes {
        Scopes(self.0 | 1 << scope as u8)
    }

    pub fn has(self, scope: Scope) -> bool {
        self.0 & (1 << scope as u8) != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.has(*s))
    }

    /// Parses a comma-separated list as stored.
    pub fn parse_list(s: &str) -> Scopes {
        s.split(',')
            .filter_map(|x| Scope::parse(x.trim()))
            .fold(Scopes::default(), Scopes::with)
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.iter().map(Scope::as_str).collect();
        f.write_str(&names.join(","))
    }
}

/// The authenticated caller of a use case.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant_id: TenantId,
    pub token_id: Option<TokenId>,
    pub scopes: Scopes,
}

impl Caller {
    /// The caller of work started by the server itself (schedules, internal workers).
    pub fn system(tenant_id: TenantId) -> Caller {
        Caller {
            tenant_id,
            token_id: None,
            scopes: Scopes::all(),
        }
    }

    pub fn require(&self, scope: Scope) -> Result<(), ServiceError> {
        // Admin implies every other scope (the bootstrap token can also run agents);
        // write implies read, as a token that may trigger a run may look at it. Agent
        // implies nothing: a worker's token only leases, heartbeats, logs and completes.
        let implied = self.scopes.has(Scope::Admin)
            || (scope == Scope::Read && self.scopes.has(Scope::Write));
        if self.scopes.has(scope) || implied {
            Ok(())
        } else {
            Err(ServiceError::Forbidden(format!(
                "this token lacks the `{}` scope",
                scope.as_str()
            )))
        }
    }

    /// Whether the caller may see objects of `tenant`. Callers outside a tenant get
    /// NOT_FOUND from the use case, never FORBIDDEN, so existence does not leak.
    pub fn sees(&self, tenant: &str) -> bool {
        self.scopes.has(Scope::Admin) || self.tenant_id.to_string() == tenant
    }
}

/// A freshly created token: the plaintext is in `token`, shown this once.
#[derive(Debug, Clone)]
pub struct TokenCreated {
    pub token: String,
    pub record: api_token::Model,
}

/// The name of the tenant every installation starts with.
pub const DEFAULT_TENANT: &str = "default";

pub(crate) fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("gty_{}", hex::encode(bytes))
}

impl Service {
    /// Ensures the default tenant and the bootstrap admin token exist. With `admin_token`
    /// (from `GANTRY_ADMIN_TOKEN`) that token is registered; without it, a token is
    /// generated on the first start only and returned so that it can be printed once.
    pub async fn bootstrap(
        &self,
        admin_token: Option<&str>,
    ) -> Result<Option<String>, ServiceError> {
        let tenant = self.ensure_default_tenant().await?;
        let db = self.store().db();
        let now = self.now_ms();
        if let Some(token) = admin_token {
            let hash = hash_token(token);
            let existing = api_token::Entity::find()
                .filter(api_token::Column::TokenHash.eq(hash.clone()))
                .one(db)
                .await?;
            if existing.is_none() {
                insert_token(db, &tenant.id, "bootstrap admin", &hash, Scopes::all(), now).await?;
            }
            return Ok(None);
        }
        let any_admin = api_token::Entity::find()
            .filter(api_token::Column::Name.eq("bootstrap admin"))
            .filter(api_token::Column::RevokedAt.is_null())
            .one(db)
            .await?;
        if any_admin.is_some() {
            return Ok(None);
        }
        let token = new_secret();
        insert_token(
            db,
            &tenant.id,
            "bootstrap admin",
            &hash_token(&token),
            Scopes::all(),
            now,
        )
        .await?;
        Ok(Some(token))
    }

    pub(crate) async fn ensure_default_tenant(&self) -> Result<tenant::Model, ServiceError> {
        let db = self.store().db();
        if let Some(t) = tenant::Entity::find()
            .filter(tenant::Column::Name.eq(DEFAULT_TENANT))
            .one(db)
            .await?
        {
            return Ok(t);
        }
        let model = tenant::ActiveModel {
            id: Set(TenantId::new().to_string()),
            name: Set(DEFAULT_TENANT.to_owned()),
            weight: Set(1),
            max_running: Set(super::tenants::DEFAULT_MAX_RUNNING),
            trigger_rate: Set(super::tenants::DEFAULT_TRIGGER_RATE),
            trigger_burst: Set(super::tenants::DEFAULT_TRIGGER_BURST),
            created_at: Set(self.now_ms()),
        };
        match model.insert(db).await {
            Ok(t) => Ok(t),
            // Another replica created it first.
            Err(_) => tenant::Entity::find()
                .filter(tenant::Column::Name.eq(DEFAULT_TENANT))
                .one(db)
                .await?
                .ok_or_else(|| ServiceError::Internal("default tenant vanished".into())),
        }
    }

    /// Resolves a bearer token to its caller.
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Caller, ServiceError> {
        let token = bearer.ok_or(ServiceError::Unauthenticated)?;
        let record = api_token::Entity::find()
            .filter(api_token::Column::TokenHash.eq(hash_token(token)))
            .one(self.store().db())
            .await?
            .ok_or(ServiceError::Unauthenticated)?;
        if record.revoked_at.is_some() {
            return Err(ServiceError::Unauthenticated);
        }
        let now = self.now_ms();
        if self.should_record_use(&record.id, now) {
            // Best effort: a failed bookkeeping write must not refuse the request.
            let res = api_token::Entity::update_many()
                .col_expr(
                    api_token::Column::LastUsedAt,
                    sea_orm::sea_query::Expr::value(now),
                )
                .filter(api_token::Column::Id.eq(record.id.clone()))
                .exec(self.store().db())
                .await;
            if let Err(e) = res {
                tracing::warn!(token_id = %record.id, error = %e, "could not record token use");
            }
        }
        Ok(Caller {
            tenant_id: record
                .tenant_id
                .parse()
                .map_err(|_| ServiceError::Internal("corrupt token tenant".into()))?,
            token_id: record.id.parse().ok(),
            scopes: Scopes::parse_list(&record.scopes),
        })
    }

    /// Creates an API token for `tenant` (default: the caller's). Admin only.
    pub async fn create_api_token(
        &self,
        caller: &Caller,
        tenant: Option<&str>,
        name: &str,
        scopes: Scopes,
    ) -> Result<TokenCreated, ServiceError> {
        caller.require(Scope::Admin)?;
        if name.trim().is_empty() || name.len() > 200 {
            return Err(ServiceError::BadInput(
                "token name must be 1 to 200 characters".into(),
            ));
        }
        if scopes == Scopes::default() {
            return Err(ServiceError::BadInput(
                "a token needs at least one scope".into(),
            ));
        }
        let tenant = self.resolve_tenant(caller, tenant).await?;
        let token = new_secret();
        let record = insert_token(
            self.store().db(),
            &tenant.id,
            name,
            &hash_token(&token),
            scopes,
            self.now_ms(),
        )
        .await?;
        Ok(TokenCreated { token, record })
    }
}

impl Service {
    /// Revokes a token: every later request with it is UNAUTHENTICATED. Admin only;
    /// revoking a revoked token changes nothing.
    pub async fn revoke_api_token(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<api_token::Model, ServiceError> {
        caller.require(Scope::Admin)?;
        let record = api_token::Entity::find_by_id(id.to_owned())
            .one(self.store().db())
            .await?
            .filter(|t| caller.sees(&t.tenant_id))
            .ok_or(ServiceError::not_found("api token"))?;
        if record.revoked_at.is_some() {
            return Ok(record);
        }
        let mut m: api_token::ActiveModel = record.into();
        m.revoked_at = Set(Some(self.now_ms()));
        let updated = m.update(self.store().db()).await?;
        tracing::info!(token_id = %updated.id, tenant_id = %updated.tenant_id, "api token revoked");
        Ok(updated)
    }

    /// The tokens of a tenant (default: every tenant the caller sees). Admin only;
    /// never their secrets.
    pub async fn api_tokens(
        &self,
        caller: &Caller,
        tenant: Option<&str>,
    ) -> Result<Vec<api_token::Model>, ServiceError> {
        caller.require(Scope::Admin)?;
        let mut q = api_token::Entity::find().order_by_asc(api_token::Column::CreatedAt);
        if let Some(t) = tenant {
            let t = self.resolve_tenant(caller, Some(t)).await?;
            q = q.filter(api_token::Column::TenantId.eq(t.id));
        }
        let mut rows: Vec<api_token::Model> = q
            .all(self.store().db())
            .await?
            .into_iter()
            .filter(|t| caller.sees(&t.tenant_id))
            .collect();
        for r in &mut rows {
            r.token_hash.clear();
        }
        Ok(rows)
    }
}

async fn insert_token(
    db: &impl sea_orm::ConnectionTrait,
    tenant_id: &str,
    name: &str,
    hash: &str,
    scopes: Scopes,
    now: i64,
) -> Result<api_token::Model, ServiceError> {
    Ok(api_token::ActiveModel {
        id: Set(TokenId::new().to_string()),
        tenant_id: Set(tenant_id.to_owned()),
        name: Set(name.to_owned()),
        token_hash: Set(hash.to_owned()),
        scopes: Set(scopes.to_string()),
        created_at: Set(now),
        last_used_at: Set(None),
        revoked_at: Set(None),
    }
    .insert(db)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_through_their_stored_form() {
        let s = Scopes::default().with(Scope::Read).with(Scope::Agent);
        assert_eq!(s.to_string(), "read,agent");
        assert_eq!(Scopes::parse_list("read,agent"), s);
        assert!(!s.has(Scope::Write));
    }

    #[test]
    fn a_read_token_cannot_write() {
        let c = Caller {
            tenant_id: TenantId::new(),
            token_id: None,
            scopes: Scopes::default().with(Scope::Read),
        };
        assert!(c.require(Scope::Read).is_ok());
        assert!(matches!(
            c.require(Scope::Write),
            Err(ServiceError::Forbidden(_))
        ));
    }

    #[test]
    fn scope_implications() {
        let with = |s: &[Scope]| Caller {
            tenant_id: TenantId::new(),
            token_id: None,
            scopes: s.iter().fold(Scopes::default(), |a, x| a.with(*x)),
        };
        let agent = with(&[Scope::Agent]);
        for s in [Scope::Read, Scope::Write, Scope::Admin] {
            assert!(agent.require(s).is_err(), "agent must not imply {s:?}");
        }
        let write = with(&[Scope::Write]);
        assert!(write.require(Scope::Read).is_ok());
        assert!(write.require(Scope::Agent).is_err());
        assert!(write.require(Scope::Admin).is_err());
        let admin = with(&[Scope::Admin]);
        for s in Scope::ALL {
            assert!(admin.require(s).is_ok());
        }
    }
}
