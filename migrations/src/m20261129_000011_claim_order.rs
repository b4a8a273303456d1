//! The claim picks a tenant's next queued attempt of a queue by priority (highest first),
//! then age. The leasing index (`queue, state, priority, scheduled_at`) can give that
//! order only for one direction at a time, so every claim collected and sorted all the
//! queue's queued attempts of the tenant: a burst of thousands made each claim slower
//! than running the task. This index has the claim's exact order, with the tenant, so a
//! claim reads the one row it takes; it also answers whether a tenant has queued work.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const NAME: &str = "attempts_claim_order";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_index(
            Index::create()
                .if_not_exists()
                .name(NAME)
                .table(Alias::new("attempts"))
                .col(Alias::new("queue"))
                .col(Alias::new("state"))
                .col(Alias::new("tenant_id"))
                .col((Alias::new("priority"), IndexOrder::Desc))
                .col(Alias::new("scheduled_at"))
                .col(Alias::new("id"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name(NAME)
                .table(Alias::new("attempts"))
                .to_owned(),
        )
        .await
    }
}
