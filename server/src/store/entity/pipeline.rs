//! The `pipelines` table. A pipeline file attached to a repository.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "pipelines")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub provider: String,
    #[sea_orm(column_type = "Text")]
    pub repository: String,
    #[sea_orm(column_type = "Text")]
    pub file: String,
    pub webhook_secret: Option<String>,
    pub next_number: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
