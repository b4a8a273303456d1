//! Scheduled runs: one row per fired cron tick of a pipeline. The primary key
//! `(pipeline_id, tick_at)` makes a tick fire once however many nodes look at it.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ScheduleTicks {
    Table,
    PipelineId,
    TickAt,
    Cron,
    RunId,
    Error,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(ScheduleTicks::Table)
                .if_not_exists()
                .col(string(ScheduleTicks::PipelineId))
                .col(big_integer(ScheduleTicks::TickAt))
                .col(string(ScheduleTicks::Cron))
                .col(string_null(ScheduleTicks::RunId))
                .col(text_null(ScheduleTicks::Error))
                .col(big_integer(ScheduleTicks::CreatedAt))
                .primary_key(
                    Index::create()
                        .col(ScheduleTicks::PipelineId)
                        .col(ScheduleTicks::TickAt),
                )
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(ScheduleTicks::Table).to_owned())
            .await
    }
}
