//! Schema migrations, embedded in the binary and applied at start.
//!
//! Every worker runs them; a session-level advisory lock (keyed by the schema name) makes
//! workers that start together take turns, so each migration runs once. Applied versions
//! are recorded in `schema_migrations`, each migration in its own transaction.

use anyhow::{Context, bail};
use tokio_postgres::Client;

/// Versioned SQL, in order. Never edit an applied migration: add the next one.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "initial", include_str!("../migrations/0001_initial.sql")),
    (
        2,
        "published flag dropped",
        include_str!("../migrations/0002_published_flag_dropped.sql"),
    ),
    (
        3,
        "group access",
        include_str!("../migrations/0003_group_access.sql"),
    ),
    (
        4,
        "chat entries",
        include_str!("../migrations/0004_chat_entries.sql"),
    ),
];

/// First key of the two-key advisory lock: names the lock's purpose, so that other
/// advisory-lock users of the database do not collide with it.
const LOCK_CLASS: i32 = 0x6564_6765; // "edge"

/// Creates `schema` if needed and applies the migrations it lacks. `client` must be a
/// connection of its own: it is left with `search_path` set to the schema.
pub(crate) async fn migrate(client: &mut Client, schema: &str) -> anyhow::Result<()> {
    client
        .execute(
            "SELECT pg_advisory_lock($1, hashtext($2))",
            &[&LOCK_CLASS, &schema],
        )
        .await
        .context("taking the migration lock")?;
    let result = apply(client, schema).await;
    // Released explicitly so that a long-lived connection does not keep others waiting; the
    // lock also goes away with the connection if this fails.
    client
        .execute(
            "SELECT pg_advisory_unlock($1, hashtext($2))",
            &[&LOCK_CLASS, &schema],
        )
        .await
        .context("releasing the migration lock")?;
    result
}

async fn apply(client: &mut Client, schema: &str) -> anyhow::Result<()> {
    let quoted = crate::db::quote_identifier(schema);
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {quoted};
             SET search_path TO {quoted};
             CREATE TABLE IF NOT EXISTS schema_migrations (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );"
        ))
        .await
        .with_context(|| format!("creating schema {schema} and its migrations table"))?;
    let applied: Vec<i32> = client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .context("reading applied migrations")?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if let Some(newer) = applied.iter().find(|&&v| v > known) {
        bail!(
            "schema {schema} has migration {newer}, newer than this build knows ({known}): \
             run a newer backend"
        );
    }
    for &(version, name, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        let tx = client.transaction().await.context("starting a migration")?;
        tx.batch_execute(sql)
            .await
            .with_context(|| format!("applying migration {version} ({name}) to {schema}"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await
        .context("recording a migration")?;
        tx.commit()
            .await
            .with_context(|| format!("committing migration {version} ({name})"))?;
        tracing::info!(schema, version, name, "applied migration");
    }
    Ok(())
}
