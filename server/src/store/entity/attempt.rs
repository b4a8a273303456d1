//! The `attempts` table. One try of a task on one worker.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "attempts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub task_id: String,
    pub run_id: String,
    pub tenant_id: String,
    pub queue: String,
    pub idx: i32,
    pub state: String,
    pub priority: i32,
    pub scheduled_at: i64,
    pub backoff_ms: i64,
    pub worker_id: Option<String>,
    pub lease_token: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub heartbeat_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub deadline_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub error_kind: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub error_message: Option<String>,
    pub cancel_requested: bool,
    pub log_bytes: i64,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
