//! The `artifacts` table. A content-addressed artifact produced by an attempt.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "artifacts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub digest: String,
    #[sea_orm(column_type = "Text")]
    pub name: String,
    pub size: i64,
    pub tenant_id: String,
    pub run_id: String,
    pub task_id: String,
    pub attempt_id: String,
    pub cache_key: Option<String>,
    pub expires_at: Option<i64>,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
