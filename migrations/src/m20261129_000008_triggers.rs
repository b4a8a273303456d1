//! Trigger jobs: a task that starts a run of another pipeline records that child run,
//! and a run records how deeply it is nested under such tasks (`runs.parent_task_id`
//! exists since the initial schema), which bounds pipelines that trigger each other.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Runs {
    Table,
    ParentTaskId,
    TriggerDepth,
}

#[derive(DeriveIden)]
enum Tasks {
    Table,
    ChildRunId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters a table one column at a time.
        m.alter_table(
            Table::alter()
                .table(Runs::Table)
                .add_column(integer(Runs::TriggerDepth).default(0))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Tasks::Table)
                .add_column(string_null(Tasks::ChildRunId))
                .to_owned(),
        )
        .await?;
        // The child's end looks up its parent task; the parent's API looks up its child.
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("runs_parent_task")
                .table(Runs::Table)
                .col(Runs::ParentTaskId)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, _m: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration("migrations are forward-only".into()))
    }
}
