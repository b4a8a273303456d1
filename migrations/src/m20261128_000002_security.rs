//! Security: webhook deliveries (deduplicated by the provider's delivery id) and
//! encrypted secrets (per tenant, or per pipeline).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WebhookDeliveries {
    Table,
    /// `<provider>:<delivery id>`: a replayed delivery collides here.
    Key,
    Provider,
    Event,
    /// The runs it triggered, as a JSON array of ids.
    Runs,
    ReceivedAt,
}

#[derive(DeriveIden)]
enum Secrets {
    Table,
    Id,
    TenantId,
    /// A pipeline id, or the empty string for a tenant-wide secret.
    Scope,
    Name,
    /// base64 of nonce ‖ ciphertext ‖ tag.
    Ciphertext,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(WebhookDeliveries::Table)
                .col(
                    ColumnDef::new(WebhookDeliveries::Key)
                        .string_len(300)
                        .not_null()
                        .primary_key(),
                )
                .col(string(WebhookDeliveries::Provider))
                .col(string(WebhookDeliveries::Event))
                .col(text(WebhookDeliveries::Runs))
                .col(big_integer(WebhookDeliveries::ReceivedAt))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(Secrets::Table)
                .col(
                    ColumnDef::new(Secrets::Id)
                        .string_len(36)
                        .not_null()
                        .primary_key(),
                )
                .col(string_len(Secrets::TenantId, 36))
                .col(string_len(Secrets::Scope, 36))
                .col(string(Secrets::Name))
                .col(text(Secrets::Ciphertext))
                .col(big_integer(Secrets::CreatedAt))
                .col(big_integer(Secrets::UpdatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("secrets_tenant_scope_name")
                .table(Secrets::Table)
                .col(Secrets::TenantId)
                .col(Secrets::Scope)
                .col(Secrets::Name)
                .unique()
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}
