//! The `webhook_deliveries` table. One received webhook delivery, keyed by provider and
//! delivery id so that a replay is recognised.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_deliveries")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub key: String,
    pub provider: String,
    pub event: String,
    #[sea_orm(column_type = "Text")]
    pub runs: String,
    pub received_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
