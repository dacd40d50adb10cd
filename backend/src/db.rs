//! The PostgreSQL connection of one shard worker: connecting, the prepared statements, and
//! how failures are classified.

use anyhow::{Context, bail};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Statement};

use crate::outcome::Outcome;
use crate::request::Request;

/// What a failed statement means for the batch that ran it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The connection is gone or the server is going away: reconnect and run the batch again.
    Connection,
    /// Another transaction got in the way (deadlock, serialization failure, a concurrent
    /// insert of the same key while a consumer fails over): run the batch again as it is.
    Conflict,
    /// The batch itself is wrong (data PostgreSQL refuses, a bug): running it again gives the
    /// same answer, so the message that causes it must be found and dead-lettered.
    Permanent,
}

/// Classifies a failure of tokio-postgres.
pub(crate) fn classify(error: &tokio_postgres::Error) -> Failure {
    if error.is_closed() {
        return Failure::Connection;
    }
    let Some(code) = error.code() else {
        // Without a server error code it is either the socket (I/O) or our own encoding or
        // decoding of values (a bug, which repeats).
        let io = std::error::Error::source(error).is_some_and(|s| s.is::<std::io::Error>());
        return if io {
            Failure::Connection
        } else {
            Failure::Permanent
        };
    };
    let class = &code.code()[..2];
    if *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::UNIQUE_VIOLATION
        || *code == SqlState::LOCK_NOT_AVAILABLE
    {
        Failure::Conflict
    } else if matches!(class, "08" | "53" | "57" | "58") {
        // Connection exceptions, insufficient resources, operator intervention (shutdown,
        // cancel), system errors: the server, not the batch.
        Failure::Connection
    } else {
        Failure::Permanent
    }
}

/// Checks that a schema name is a plain lower-case SQL identifier, so that it can be quoted
/// into DDL and `search_path` safely and means the same quoted or not.
pub(crate) fn check_schema_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if !first_ok
        || name.len() > 63
        || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        bail!(
            "schema name {name:?} must be 1-63 characters of a-z, 0-9 and _, not starting with a digit"
        );
    }
    Ok(())
}

/// A checked schema name, double-quoted.
pub(crate) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Idle time before TCP keepalive probes start on a database connection.
const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens a connection with `search_path` set to `schema`. The connection's I/O runs in a
/// task of its own that ends when the returned client is dropped.
pub(crate) async fn connect_client(url: &str, schema: &str) -> anyhow::Result<Client> {
    let mut config: tokio_postgres::Config = url.parse().context("parsing the database URL")?;
    if config.get_application_name().is_none() {
        config.application_name("edge-backend");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(crate::lifecycle::CONNECT_TIMEOUT);
    }
    // A dead server or a cut path is noticed by TCP keepalives, so a statement does not
    // wait on it forever.
    config.keepalives(true);
    config.keepalives_idle(KEEPALIVE_IDLE);
    // The connect timeout covers reaching the server; this covers a server that accepts
    // TCP but never finishes the startup handshake.
    let (client, connection) =
        tokio::time::timeout(crate::lifecycle::CONNECT_TIMEOUT, config.connect(NoTls))
            .await
            .context("PostgreSQL did not answer the connection in time")?
            .context("connecting to PostgreSQL")?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "PostgreSQL connection ended with an error");
        }
    });
    client
        .batch_execute(&format!("SET search_path TO {}", quote_identifier(schema)))
        .await
        .context("setting search_path")?;
    Ok(client)
}

/// One worker's connection with its statements prepared.
pub(crate) struct Db {
    client: Client,
    st: Statements,
    /// Chats one user may have created that still exist.
    max_chats_per_user: usize,
}

impl Db {
    /// Connects and prepares every statement (which also checks them against the schema).
    pub(crate) async fn connect(
        url: &str,
        schema: &str,
        max_chats_per_user: usize,
    ) -> anyhow::Result<Db> {
        let client = connect_client(url, schema).await?;
        // Every statement is prepared once and written so that its generic plan is index
        // lookups (checked by `statements_have_index_driven_generic_plans`). Left at `auto`,
        // PostgreSQL plans the array-taking statements afresh on every run, because a custom
        // plan that sees the arrays' sizes always looks cheaper than the generic one: planning
        // then costs more than executing (0.5 ms against 0.35 ms for the acks statement).
        //
        // A generic plan is cached for the connection's life, or until an analyze of its
        // tables: on a new schema, whose tables were never analyzed and look small, the acks
        // statement hashed a scan of every member row, and kept doing so on every batch while
        // the tables grew, until the autovacuum's first analyze (up to a minute or more).
        // Every statement here is meant to reach its rows by key, so a whole-table scan is
        // never the right plan: `enable_seqscan = off` keeps the planner to the indexes
        // whatever the statistics say.
        client
            .batch_execute("SET plan_cache_mode TO force_generic_plan; SET enable_seqscan TO off")
            .await
            .context("setting the planner's options")?;
        let st = Statements::prepare(&client)
            .await
            .context("preparing statements")?;
        Ok(Db {
            client,
            st,
            max_chats_per_user,
        })
    }

    /// Runs `requests` in one transaction and commits it.
    pub(crate) async fn apply(
        &mut self,
        requests: &[&Request],
        now_us: u64,
    ) -> Result<Outcome, tokio_postgres::Error> {
        let tx = self.client.transaction().await?;
        let outcome =
            crate::persist::apply(&tx, &self.st, requests, now_us, self.max_chats_per_user).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Runs `requests` in one transaction, each inside a savepoint of its own, and commits
    /// what the database took. Returns the outcome of the taken ones and, per refused one, its
    /// index and the error. This is the one retry of a batch the database refused as a
    /// whole: it finds every frame at fault in one transaction, not one transaction each. A
    /// failure that is not the frame's own (the connection, a conflict) fails the whole.
    pub(crate) async fn apply_each(
        &mut self,
        requests: &[&Request],
        now_us: u64,
    ) -> Result<(Outcome, Vec<(usize, tokio_postgres::Error)>), tokio_postgres::Error> {
        let mut tx = self.client.transaction().await?;
        let mut outcome = Outcome::default();
        let mut refused = Vec::new();
        for (index, &request) in requests.iter().enumerate() {
            let savepoint = tx.savepoint("frame").await?;
            let one = [request];
            let applied =
                crate::persist::apply(&savepoint, &self.st, &one, now_us, self.max_chats_per_user);
            match applied.await {
                Ok(one) => {
                    savepoint.commit().await?;
                    outcome.merge(one);
                }
                Err(error) if classify(&error) == Failure::Permanent => {
                    savepoint.rollback().await?;
                    refused.push((index, error));
                }
                Err(error) => return Err(error),
            }
        }
        tx.commit().await?;
        Ok((outcome, refused))
    }
}

/// Every statement the worker runs, prepared once per connection.
pub(crate) struct Statements {
    /// (senders[], client_msg_ids[]) -> stored messages with those keys.
    pub find_messages: Statement,
    /// (chat_ids[], user_ids[]) -> per pair: chat exists, user is a member.
    pub membership_pairs: Statement,
    /// (chat_ids[], counts[]) -> (chat_id, new last_seq); row-locks the chats.
    pub take_seqs: Statement,
    /// (chat_ids[], seqs[], senders[], client_msg_ids[], bodies[], server_times[]).
    pub insert_messages: Statement,
    /// (chat_ids[]) -> (chat_id, user_id) of every member.
    pub members_of_chats: Statement,
    /// A segment's folded acks: see `persist::APPLY_ACKS`.
    pub apply_acks: Statement,
    /// (chat_id, user_id) -> (chat exists, user is a member).
    pub membership: Statement,
    /// (chat_id, after_seq, limit) -> messages after the seq, oldest first.
    pub sync_page: Statement,
    /// (chat_id, before_seq, limit) -> messages before the seq, newest first.
    pub sync_page_before: Statement,
    /// (user_id, before_activity_us, before_chat_id, limit) -> the user's chats older than
    /// the cursor, most recent activity first: (id, kind, title, last_seq, activity,
    /// member count, delivered_seq, read_seq).
    pub list_chats: Statement,
    /// (chat_id) -> (chat exists, kind or null, member ids[]).
    pub chat_and_members: Statement,
    /// (kind, title, creator, client_msg_id, direct_low, direct_high) -> new chat id, or no
    /// row if a chat of that create or of that pair exists.
    pub create_chat: Statement,
    /// (chat_id, user_ids[], admin or null): adds members, ignoring ones already there; the
    /// admin (if one of them) gets that role.
    pub add_members: Statement,
    /// (creator, client_msg_id) -> chat id of the chat that create made.
    pub find_created_chat: Statement,
    /// (direct_low, direct_high) -> chat id of the pair's direct chat.
    pub find_direct_chat: Statement,
    /// (creator) -> how many chats that exist the user created.
    pub count_created_chats: Statement,
    /// (chat_id) -> (kind, title, creator, member ids[]).
    pub chat_snapshot: Statement,
    /// (chat_id, user_id) -> (kind, title, creator, member ids[], the user's role or null,
    /// the client msg id of the user's latest leave or null); locks the chat.
    pub lock_chat_for_change: Statement,
    /// (chat_id, user_ids[]) -> the ids that were members and are removed.
    pub remove_members: Statement,
    /// (chat_id, user_id, client_msg_id): records the user's latest leave.
    pub record_departure: Statement,
    /// (chat_id): deletes the chat, with its history, if it has no members.
    pub free_chat_if_empty: Statement,
    /// (user_id, user_ids[]) -> the ids among them that share a chat with the user.
    pub shared_chat_users: Statement,
    /// Those of edits, deletes and reactions.
    pub entries: crate::persist::EntryStatements,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Statements, tokio_postgres::Error> {
        let p = |sql: &'static str| client.prepare(sql);
        Ok(Statements {
            // Lookups through `LATERAL ... LIMIT 1` stay index lookups in the generic plan
            // (see `persist::APPLY_ACKS`).
            find_messages: p("SELECT m.sender, m.client_msg_id, m.chat_id, m.seq, m.server_time_us, m.body
                 FROM unnest($1::bigint[], $2::bigint[]) AS k(sender, client_msg_id)
                 JOIN LATERAL (SELECT * FROM messages
                               WHERE sender = k.sender AND client_msg_id = k.client_msg_id LIMIT 1) m ON true")
            .await?,
            membership_pairs: p("SELECT k.chat_id, k.user_id, c.id IS NOT NULL, cm.user_id IS NOT NULL
                 FROM unnest($1::bigint[], $2::bigint[]) AS k(chat_id, user_id)
                 LEFT JOIN LATERAL (SELECT id FROM chats WHERE id = k.chat_id LIMIT 1) c ON true
                 LEFT JOIN LATERAL (SELECT user_id FROM chat_members
                                    WHERE chat_id = k.chat_id AND user_id = k.user_id LIMIT 1) cm ON true")
            .await?,
            // `c.id = ANY ($1)` keeps the chats an index lookup in the generic plan: joined
            // with the unnest alone, the planner hashes it against a scan of every chat.
            take_seqs: p("UPDATE chats c SET last_seq = c.last_seq + v.n
                 FROM unnest($1::bigint[], $2::bigint[]) AS v(id, n)
                 WHERE c.id = v.id AND c.id = ANY ($1::bigint[])
                 RETURNING c.id, c.last_seq")
            .await?,
            insert_messages: p("INSERT INTO messages (chat_id, seq, sender, client_msg_id, body, server_time_us)
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::bigint[])")
            .await?,
            members_of_chats: p("SELECT chat_id, user_id FROM chat_members WHERE chat_id = ANY ($1::bigint[])")
                .await?,
            apply_acks: p(crate::persist::APPLY_ACKS).await?,
            membership: p("SELECT EXISTS (SELECT 1 FROM chats WHERE id = $1),
                        EXISTS (SELECT 1 FROM chat_members WHERE chat_id = $1 AND user_id = $2)")
            .await?,
            sync_page: p("SELECT seq, sender, client_msg_id, server_time_us, body, kind, target_seq FROM messages
                 WHERE chat_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
            .await?,
            // The primary key (chat_id, seq) read backwards: no index of its own.
            sync_page_before: p("SELECT seq, sender, client_msg_id, server_time_us, body, kind, target_seq FROM messages
                 WHERE chat_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3")
            .await?,
            // A chat's activity is its newest message's time (one primary key lookup), or
            // its creation if it has none. Read per member row of the user: a user's chats
            // are few enough that no column kept up to date on every send pays for itself.
            list_chats: p("SELECT c.id, c.kind, c.title, c.last_seq, a.activity,
                        (SELECT count(*) FROM chat_members n WHERE n.chat_id = c.id),
                        cm.delivered_seq, cm.read_seq
                 FROM chat_members cm
                 JOIN chats c ON c.id = cm.chat_id
                 CROSS JOIN LATERAL (SELECT COALESCE(
                     (SELECT m.server_time_us FROM messages m WHERE m.chat_id = c.id AND m.seq = c.last_seq),
                     (extract(epoch FROM c.created_at) * 1000000)::bigint) AS activity) a
                 WHERE cm.user_id = $1 AND (a.activity, c.id) < ($2, $3)
                 ORDER BY a.activity DESC, c.id DESC
                 LIMIT $4")
            .await?,
            chat_and_members: p("SELECT c.id IS NOT NULL, c.kind,
                        ARRAY (SELECT user_id FROM chat_members WHERE chat_id = $1 ORDER BY user_id)
                 FROM (SELECT 1) AS one LEFT JOIN chats c ON c.id = $1")
            .await?,
            create_chat: p("INSERT INTO chats (kind, title, creator, creator_client_msg_id, direct_low, direct_high)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT DO NOTHING RETURNING id")
            .await?,
            add_members: p("INSERT INTO chat_members (chat_id, user_id, role)
                 SELECT $1, u, CASE WHEN u = $3 THEN 'admin' ELSE 'member' END FROM unnest($2::bigint[]) AS u
                 ON CONFLICT (chat_id, user_id) DO NOTHING")
            .await?,
            find_created_chat: p("SELECT id FROM chats WHERE creator = $1 AND creator_client_msg_id = $2")
                .await?,
            find_direct_chat: p("SELECT id FROM chats WHERE direct_low = $1 AND direct_high = $2")
                .await?,
            count_created_chats: p("SELECT count(*) FROM chats WHERE creator = $1").await?,
            chat_snapshot: p("SELECT c.kind, c.title, c.creator,
                        ARRAY (SELECT user_id FROM chat_members WHERE chat_id = c.id ORDER BY user_id)
                 FROM chats c WHERE c.id = $1")
            .await?,
            lock_chat_for_change: p("SELECT c.kind, c.title, c.creator,
                        ARRAY (SELECT user_id FROM chat_members WHERE chat_id = c.id ORDER BY user_id),
                        (SELECT role FROM chat_members WHERE chat_id = c.id AND user_id = $2),
                        (SELECT client_msg_id FROM chat_departures WHERE chat_id = c.id AND user_id = $2)
                 FROM chats c WHERE c.id = $1 FOR UPDATE")
            .await?,
            remove_members: p("DELETE FROM chat_members WHERE chat_id = $1 AND user_id = ANY ($2::bigint[])
                 RETURNING user_id")
            .await?,
            record_departure: p("INSERT INTO chat_departures (chat_id, user_id, client_msg_id) VALUES ($1, $2, $3)
                 ON CONFLICT (chat_id, user_id) DO UPDATE SET client_msg_id = EXCLUDED.client_msg_id")
            .await?,
            // Its members' rows, messages and departures go with it (ON DELETE CASCADE).
            free_chat_if_empty: p("DELETE FROM chats c WHERE c.id = $1
                 AND NOT EXISTS (SELECT 1 FROM chat_members WHERE chat_id = c.id)")
            .await?,
            shared_chat_users: p("SELECT DISTINCT other.user_id
                 FROM chat_members mine
                 JOIN chat_members other ON other.chat_id = mine.chat_id
                 WHERE mine.user_id = $1 AND other.user_id = ANY ($2::bigint[])")
            .await?,
            entries: crate::persist::EntryStatements::prepare(client).await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every statement's generic plan (the one `force_generic_plan` makes the worker use)
    /// reaches the tables that grow with the traffic through an index, never a scan of the
    /// whole table: checked against real PostgreSQL, first on a new schema whose tables were
    /// never analyzed (the plans a worker caches on its first start, kept until the
    /// autovacuum's first analyze), then with analyzed tables of a demo's size.
    #[tokio::test]
    async fn statements_have_index_driven_generic_plans() {
        let url = std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("plans_{}_{}", std::process::id(), now_nanos());
        let mut client = connect_client(&url, &schema).await.unwrap();
        crate::migrate::migrate(&mut client, &schema).await.unwrap();
        let scans_when_new = whole_table_scans(&url, &schema).await;
        client
            .batch_execute(
                "INSERT INTO chats (kind, title, creator, creator_client_msg_id, last_seq)
                     SELECT 'group', 't', g * 10, 1, 20 FROM generate_series(1, 1000) g;
                 INSERT INTO chat_members (chat_id, user_id)
                     SELECT c, (c - 1) * 10 + u FROM generate_series(1, 1000) c,
                                                     generate_series(1, 10) u;
                 INSERT INTO messages (chat_id, seq, sender, client_msg_id, body, server_time_us)
                     SELECT c, s, (c - 1) * 10 + s % 10 + 1, c * 100 + s, 'hi', 0
                     FROM generate_series(1, 1000) c, generate_series(1, 20) s;
                 INSERT INTO chat_departures (chat_id, user_id, client_msg_id)
                     SELECT c, c * 10, 1 FROM generate_series(1, 1000) c;
                 ANALYZE",
            )
            .await
            .unwrap();
        let scans_when_analyzed = whole_table_scans(&url, &schema).await;
        client
            .batch_execute(&format!(
                "DROP SCHEMA {} CASCADE",
                quote_identifier(&schema)
            ))
            .await
            .unwrap();
        assert!(
            scans_when_new.is_empty(),
            "whole-table scans in generic plans on a new schema: {scans_when_new:#?}"
        );
        assert!(
            scans_when_analyzed.is_empty(),
            "whole-table scans in generic plans with analyzed tables: {scans_when_analyzed:#?}"
        );
    }

    /// The lines of the generic plans of the statements `Db::connect` prepares that scan a
    /// whole table which grows with the traffic, or its whole index, each with its statement.
    async fn whole_table_scans(url: &str, schema: &str) -> Vec<String> {
        let db = Db::connect(url, schema, 10).await.unwrap();
        let prepared = db
            .client
            .query(
                "SELECT name, statement, cardinality(parameter_types)
                 FROM pg_prepared_statements",
                &[],
            )
            .await
            .unwrap();
        assert!(prepared.len() >= 20, "{} statements", prepared.len());
        let mut scans = Vec::new();
        for statement in prepared {
            let (name, sql, params): (String, String, i32) =
                (statement.get(0), statement.get(1), statement.get(2));
            // EXPLAIN without ANALYZE plans the statement and runs nothing.
            let nulls = vec!["NULL"; params as usize].join(", ");
            let args = if nulls.is_empty() {
                String::new()
            } else {
                format!("({nulls})")
            };
            let explain = format!("EXPLAIN (COSTS OFF) EXECUTE {name}{args}");
            let plan: Vec<String> = db
                .client
                .query(explain.as_str(), &[])
                .await
                .unwrap()
                .iter()
                .map(|row| row.get(0))
                .collect();
            for (at, line) in plan.iter().enumerate() {
                let growing = ["chats", "chat_members", "messages", "chat_departures"]
                    .iter()
                    .any(|table| line.contains(&format!(" on {table}")));
                let sequential = line.contains("Seq Scan on ");
                // An index scan without a condition reads the whole index: a scan too.
                let whole_index = line.contains("Index")
                    && line.contains("Scan")
                    && !plan
                        .get(at + 1)
                        .is_some_and(|next| next.contains("Index Cond:"));
                if growing && (sequential || whole_index) {
                    scans.push(format!("{}: {}", line.trim(), sql.trim()));
                }
            }
        }
        scans
    }

    fn now_nanos() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["edge", "_x", "test_0a1b", "a"] {
            assert!(check_schema_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Edge", "1x", "a-b", "a;b", "a\"b", &"x".repeat(64)] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
        assert_eq!(quote_identifier("edge"), "\"edge\"");
    }
}
