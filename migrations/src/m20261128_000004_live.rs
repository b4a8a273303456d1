//! Outbound status webhooks: the delivery log of each pipeline's `notify:` targets.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WebhookDeliveries {
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
                .table(WebhookDeliveries::Table)
                .if_not_exists()
                .col(string(WebhookDeliveries::Id).primary_key())
                .col(string(WebhookDeliveries::TenantId))
                .col(string(WebhookDeliveries::PipelineId))
                .col(string(WebhookDeliveries::RunId))
                .col(big_integer(WebhookDeliveries::EventSeq))
                .col(text(WebhookDeliveries::Url))
                .col(string(WebhookDeliveries::Format))
                .col(text(WebhookDeliveries::Payload))
                .col(string(WebhookDeliveries::State))
                .col(integer(WebhookDeliveries::Attempts))
                .col(integer_null(WebhookDeliveries::ResponseStatus))
                .col(text_null(WebhookDeliveries::Error))
                .col(big_integer(WebhookDeliveries::CreatedAt))
                .col(big_integer(WebhookDeliveries::UpdatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("webhook_deliveries_pipeline_created")
                .table(WebhookDeliveries::Table)
                .col(WebhookDeliveries::PipelineId)
                .col(WebhookDeliveries::CreatedAt)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(WebhookDeliveries::Table).to_owned())
            .await
    }
}
