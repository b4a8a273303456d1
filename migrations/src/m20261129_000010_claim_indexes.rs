//! Indexes for the fair claim: it counts, per tenant, the attempts running now and those
//! started in the fairness window. Without them each lease scans every attempt ever made,
//! so leasing would slow down as history grows.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Attempts {
    Table,
    TenantId,
    State,
    Queue,
    StartedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("attempts_tenant_state")
                .table(Attempts::Table)
                .col(Attempts::TenantId)
                .col(Attempts::State)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("attempts_tenant_queue_started")
                .table(Attempts::Table)
                .col(Attempts::TenantId)
                .col(Attempts::Queue)
                .col(Attempts::StartedAt)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("attempts_tenant_queue_started")
                .table(Attempts::Table)
                .to_owned(),
        )
        .await?;
        m.drop_index(
            Index::drop()
                .name("attempts_tenant_state")
                .table(Attempts::Table)
                .to_owned(),
        )
        .await
    }
}
