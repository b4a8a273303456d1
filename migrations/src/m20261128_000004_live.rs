//! Outbound status webhooks: the delivery log of each pipeline's `notify:` targets.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum StatusDeliveries {
    Table,
    Id,
    TenantId,
    PipelineId,
    RunId,
    EventSeq,
    Url,
    Format,
    Payload,
    State,
    Attempts,
    ResponseStatus,
    Error,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(StatusDeliveries::Table)
                .if_not_exists()
                .col(string(StatusDeliveries::Id).primary_key())
                .col(string(StatusDeliveries::TenantId))
                .col(string(StatusDeliveries::PipelineId))
                .col(string(StatusDeliveries::RunId))
                .col(big_integer(StatusDeliveries::EventSeq))
                .col(text(StatusDeliveries::Url))
                .col(string(StatusDeliveries::Format))
                .col(text(StatusDeliveries::Payload))
                .col(string(StatusDeliveries::State))
                .col(integer(StatusDeliveries::Attempts))
                .col(integer_null(StatusDeliveries::ResponseStatus))
                .col(text_null(StatusDeliveries::Error))
                .col(big_integer(StatusDeliveries::CreatedAt))
                .col(big_integer(StatusDeliveries::UpdatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("status_deliveries_pipeline_created")
                .table(StatusDeliveries::Table)
                .col(StatusDeliveries::PipelineId)
                .col(StatusDeliveries::CreatedAt)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(StatusDeliveries::Table).to_owned())
            .await
    }
}
