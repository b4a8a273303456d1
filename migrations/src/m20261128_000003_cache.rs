//! Dedup and cache: single-flight leaders and the tasks waiting for them, and whether a
//! run asked to ignore cache hits.
//!
//! `cache_flights` holds one row per cache key being built right now (its primary key is
//! what makes "one leader per key" hold across nodes); `cache_waiters` holds the tasks that
//! wait for that build instead of running the same thing again.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum CacheFlights {
    Table,
    Key,
    TenantId,
    TaskId,
    RunId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum CacheWaiters {
    Table,
    TaskId,
    Key,
    TenantId,
    RunId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Runs {
    Table,
    NoCache,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(CacheFlights::Table)
                .col(string(CacheFlights::Key).primary_key())
                .col(string_len(CacheFlights::TenantId, 36))
                .col(string_len(CacheFlights::TaskId, 36))
                .col(string_len(CacheFlights::RunId, 36))
                .col(big_integer(CacheFlights::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("cache_flights_task")
                .table(CacheFlights::Table)
                .col(CacheFlights::TaskId)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(CacheWaiters::Table)
                .col(string_len(CacheWaiters::TaskId, 36).primary_key())
                .col(string(CacheWaiters::Key))
                .col(string_len(CacheWaiters::TenantId, 36))
                .col(string_len(CacheWaiters::RunId, 36))
                .col(big_integer(CacheWaiters::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("cache_waiters_key")
                .table(CacheWaiters::Table)
                .col(CacheWaiters::Key)
                .col(CacheWaiters::CreatedAt)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Runs::Table)
                .add_column(boolean(Runs::NoCache).default(false))
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, _m: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration("migrations are forward-only".into()))
    }
}
