//! The `schedule_ticks` table. One fired cron tick of a pipeline and the run it started.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "schedule_ticks")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub pipeline_id: String,
    /// The tick's minute, milliseconds since the Unix epoch (UTC).
    #[sea_orm(primary_key, auto_increment = false)]
    pub tick_at: i64,
    pub cron: String,
    pub run_id: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub error: Option<String>,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
