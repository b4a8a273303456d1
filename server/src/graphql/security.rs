//! GraphQL types of tokens and secrets. A token's secret is shown only by
//! `createApiToken`; a secret's value is never shown.

use async_graphql::{ID, InputObject, SimpleObject};

use super::types::Scope;
use crate::clock::to_datetime;
use crate::service::Scopes;
use crate::store::entity::{api_token, secret};

/// An API token's record (never its secret).
#[derive(SimpleObject)]
pub struct ApiToken {
    pub id: ID,
    pub name: String,
    pub tenant_id: ID,
    pub scopes: Vec<Scope>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Last authenticated use, to the minute.
    pub last_used_at: Option<chrono::DateTime<chrono::Utc>>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<api_token::Model> for ApiToken {
    fn from(m: api_token::Model) -> Self {
        ApiToken {
            id: ID(m.id),
            name: m.name,
            tenant_id: ID(m.tenant_id),
            scopes: Scopes::parse_list(&m.scopes)
                .iter()
                .map(Into::into)
                .collect(),
            created_at: to_datetime(m.created_at),
            last_used_at: m.last_used_at.map(to_datetime),
            revoked_at: m.revoked_at.map(to_datetime),
        }
    }
}

/// A stored secret: its name and where it applies. The value is write-only.
#[derive(SimpleObject)]
pub struct Secret {
    pub id: ID,
    pub name: String,
    pub tenant_id: ID,
    /// The pipeline it is limited to; null for every pipeline of the tenant.
    pub pipeline_id: Option<ID>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<secret::Model> for Secret {
    fn from(m: secret::Model) -> Self {
        Secret {
            id: ID(m.id),
            name: m.name,
            tenant_id: ID(m.tenant_id),
            pipeline_id: (!m.scope.is_empty()).then_some(ID(m.scope)),
            created_at: to_datetime(m.created_at),
            updated_at: to_datetime(m.updated_at),
        }
    }
}

#[derive(InputObject)]
pub struct SetSecretInput {
    /// Tenant id or name; default: the caller's. Ignored when `pipeline` is given.
    pub tenant: Option<String>,
    /// Limit the secret to one pipeline (it overrides a tenant secret of the same name).
    pub pipeline: Option<ID>,
    /// Letters, digits and `_`; used as `${{ secrets.NAME }}` in env values.
    pub name: String,
    pub value: String,
}
