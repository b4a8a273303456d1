//! The `runs` table. One execution of a pipeline for a commit.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "runs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub tenant_id: String,
    pub pipeline_id: String,
    pub number: i64,
    pub provider: String,
    #[sea_orm(column_type = "Text")]
    pub repository: String,
    pub sha: String,
    pub git_ref: String,
    pub trigger_kind: String,
    pub idempotency_key: Option<String>,
    pub concurrency_group: Option<String>,
    pub cancel_in_progress: bool,
    pub priority: i32,
    pub state: String,
    pub parent_task_id: Option<String>,
    pub held: bool,
    pub tasks_total: i32,
    pub tasks_remaining: i32,
    pub tasks_failed: i32,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Asked to ignore cache hits (`triggerRun(noCache: true)`).
    pub no_cache: bool,
    /// How many trigger jobs deep this run is: 0 for a run started any other way, the
    /// parent run's depth + 1 for a run started by a trigger job (`parent_task_id`).
    pub trigger_depth: i32,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
