//! Fair dispatch and quotas: the claim counts, per tenant, the attempts it holds (leased
//! or running) and those it started recently in a queue; these indexes keep both counts
//! to the tenant's own rows.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEXES: [(&str, &[&str]); 2] = [
    ("attempts_tenant_state", &["tenant_id", "state"]),
    (
        "attempts_tenant_queue_started",
        &["tenant_id", "queue", "started_at"],
    ),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (name, cols) in INDEXES {
            let mut stmt = Index::create();
            stmt.if_not_exists()
                .name(name)
                .table(Alias::new("attempts"));
            for c in cols {
                stmt.col(Alias::new(*c));
            }
            m.create_index(stmt.to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (name, _) in INDEXES {
            m.drop_index(
                Index::drop()
                    .if_exists()
                    .name(name)
                    .table(Alias::new("attempts"))
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
