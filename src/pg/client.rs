//! Talking to a PostgreSQL server as a client: psql for one statement at a time,
//! quoting, databases and tables, row counts.

use std::process::Stdio;

use tokio::process::Command;

use super::{pg_program, ConnectOptions};
use crate::error::{Error, Result};

/// The database a client connects to for CREATE and DROP DATABASE.
pub const MAINTENANCE_DB: &str = "postgres";

/// A PostgreSQL client program with the connection options.
pub fn client(program: &str, conn: &ConnectOptions) -> Command {
    let mut cmd = Command::new(pg_program(program));
    cmd.args(conn.client_args());
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// The last 20 lines of a program's output, for an error message.
pub fn tail(s: &[u8]) -> String {
    let s = String::from_utf8_lossy(s);
    let s = s.trim();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Runs one SQL statement with psql and returns its unaligned output.
///
/// Errors: `External` with psql's error output when it fails or cannot start.
pub async fn psql(conn: &ConnectOptions, db: &str, sql: &str) -> Result<String> {
    let out = client("psql", conn)
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "--dbname",
            db,
            "-c",
            sql,
        ])
        .output()
        .await
        .map_err(|e| Error::External(format!("Cannot start psql: {e}")))?;
    if !out.status.success() {
        return Err(Error::External(format!(
            "psql on database {db} failed ({}): {}",
            out.status,
            tail(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Drops a database, disconnecting whoever is still in it.
///
/// Errors: `External` when the server refuses or cannot be reached.
pub async fn drop_database(conn: &ConnectOptions, name: &str) -> Result<()> {
    let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
    match psql(conn, MAINTENANCE_DB, &sql).await {
        Ok(_) => Ok(()),
        // Before PostgreSQL 13 there is no FORCE.
        Err(e) if e.to_string().contains("syntax error") => psql(
            conn,
            MAINTENANCE_DB,
            &format!("DROP DATABASE IF EXISTS {}", quote_ident(name)),
        )
        .await
        .map(|_| ()),
        Err(e) => Err(e),
    }
}

/// The TABLE DATA entries of a `pg_restore -l` listing, as (schema, table).
///
/// A listing line reads `dumpId; tableoid oid TABLE DATA schema table owner`.
pub fn table_data_entries(listing: &str) -> Vec<(String, String)> {
    listing
        .lines()
        .filter(|l| !l.trim_start().starts_with(';'))
        .filter_map(|l| {
            let (_, rest) = l.split_once("; ")?;
            let rest = rest.split_once(" TABLE DATA ")?.1;
            let (schema, rest) = rest.split_once(' ')?;
            // The owner is the last word; a table name may hold spaces.
            let table = rest.rsplit_once(' ').map(|(t, _)| t).unwrap_or(rest);
            Some((schema.to_string(), table.to_string()))
        })
        .collect()
}

/// Ordinary and partitioned tables of a database, as (schema, table).
pub async fn list_tables(conn: &ConnectOptions, db: &str) -> Result<Vec<(String, String)>> {
    let json = psql(
        conn,
        db,
        "SELECT coalesce(json_agg(json_build_array(n.nspname, c.relname) ORDER BY n.nspname, c.relname), '[]') \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND n.nspname <> 'information_schema' \
         AND n.nspname NOT LIKE 'pg\\_%'",
    )
    .await?;
    let v: Vec<(String, String)> = serde_json::from_str(json.trim())
        .map_err(|e| Error::External(format!("Unexpected table list from database {db}: {e}")))?;
    Ok(v)
}

/// Exact row counts of `tables`.
pub async fn row_counts(
    conn: &ConnectOptions,
    db: &str,
    tables: &[(String, String)],
) -> Result<Vec<(String, i64)>> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<String> = tables
        .iter()
        .map(|(s, t)| {
            format!(
                "SELECT {} AS t, count(*) AS n FROM {}.{}",
                quote_literal(&format!("{s}.{t}")),
                quote_ident(s),
                quote_ident(t)
            )
        })
        .collect();
    let sql = format!(
        "SELECT json_agg(json_build_array(t, n) ORDER BY t) FROM ({}) s",
        parts.join(" UNION ALL ")
    );
    let json = psql(conn, db, &sql).await?;
    serde_json::from_str(json.trim())
        .map_err(|e| Error::External(format!("Unexpected row counts from database {db}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_data_lines_are_parsed() {
        let l = ";\n; Archive created at 2026\n215; 1259 16390 TABLE public teams postgres\n\
                 3383; 0 16390 TABLE DATA public teams postgres\n\
                 3384; 0 16400 TABLE DATA public my table alice\n";
        assert_eq!(
            table_data_entries(l),
            vec![
                ("public".to_string(), "teams".to_string()),
                ("public".to_string(), "my table".to_string())
            ]
        );
    }
}
