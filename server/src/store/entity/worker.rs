//! The `workers` table. A registered worker: in-process or a remote agent.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "workers")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub node: String,
    pub kind: String,
    #[sea_orm(column_type = "Text")]
    pub queues: String,
    #[sea_orm(column_type = "Text")]
    pub labels: String,
    pub capacity: i32,
    pub state: String,
    pub last_heartbeat_at: i64,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
