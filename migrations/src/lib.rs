//! Database migrations for Gantry, one file per migration, for SQLite and PostgreSQL alike.
//!
//! Migrations are forward-only. Times are stored as milliseconds since the Unix epoch
//! (BIGINT) so that queries compare them the same way on both databases and take `now` as a
//! bound parameter instead of the database clock (tests inject time).

pub use sea_orm_migration::prelude::*;

mod m20261128_000001_initial;
mod m20261128_000002_security;
mod m20261128_000003_cache;
mod m20261128_000004_live;
mod m20261128_000006_fairness;
mod m20261128_000007_schedules;
mod m20261129_000008_triggers;
mod m20261129_000009_load;
mod m20261129_000010_claim_indexes;
mod m20261129_000011_claim_order;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_initial::Migration),
            Box::new(m20261128_000002_security::Migration),
            Box::new(m20261128_000003_cache::Migration),
            Box::new(m20261128_000004_live::Migration),
            Box::new(m20261128_000006_fairness::Migration),
            Box::new(m20261128_000007_schedules::Migration),
            Box::new(m20261129_000008_triggers::Migration),
            Box::new(m20261129_000009_load::Migration),
            Box::new(m20261129_000010_claim_indexes::Migration),
            Box::new(m20261129_000011_claim_order::Migration),
        ]
    }
}
