//! The `status_deliveries` table: one row per outbound status webhook delivery, updated
//! after each try.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "status_deliveries")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub tenant_id: String,
    pub pipeline_id: String,
    pub run_id: String,
    /// The event that caused it.
    pub event_seq: i64,
    pub url: String,
    /// `gantry` or `github-status`.
    pub format: String,
    /// The JSON body sent.
    pub payload: String,
    /// `pending` (tries left), `delivered` or `failed` (gave up).
    pub state: String,
    pub attempts: i32,
    /// The HTTP status of the last try, if the receiver answered.
    pub response_status: Option<i32>,
    /// Why the last try failed.
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
