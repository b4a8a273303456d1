//! The load picture (`queueStats`) reads, per queue, the attempts that had not ended
//! before its window; this index keeps that read to the queue's recent and open rows
//! instead of every attempt ever made.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const NAME: &str = "attempts_queue_finished";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_index(
            Index::create()
                .if_not_exists()
                .name(NAME)
                .table(Alias::new("attempts"))
                .col(Alias::new("queue"))
                .col(Alias::new("finished_at"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .if_exists()
                .name(NAME)
                .table(Alias::new("attempts"))
                .to_owned(),
        )
        .await
    }
}
