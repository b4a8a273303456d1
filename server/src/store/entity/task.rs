//! The `tasks` table. One job of a run's DAG.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "tasks")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub run_id: String,
    pub tenant_id: String,
    pub name: String,
    pub job_id: String,
    #[sea_orm(column_type = "Text")]
    pub spec: String,
    pub queue: String,
    #[sea_orm(column_type = "Text")]
    pub labels: String,
    #[sea_orm(column_type = "Text")]
    pub needs: String,
    #[sea_orm(column_type = "Text")]
    pub dependents: String,
    pub pending_deps: i32,
    #[sea_orm(column_type = "Text")]
    pub condition: Option<String>,
    pub continue_on_error: bool,
    pub max_attempts: i32,
    pub timeout_ms: i64,
    pub cache_key: Option<String>,
    pub state: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The run a trigger job started (its latest, after a retry by hand).
    pub child_run_id: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
