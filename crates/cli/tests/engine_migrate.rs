//! Database migrations as a deploy step, against a real PostgreSQL started by the test: run
//! once per deploy across a 3-node rolling deploy, a failing one leaves the old release
//! serving with no failed request, and a rollback past a migration that cannot be undone is
//! refused unless forced.

mod support;

use nonstop_testkit::postgres::Postgres;
use support::*;

fn migrate(pg: &Postgres, sql: &str, extra: &str) -> String {
    let argv: Vec<String> = pg
        .psql_argv(sql)
        .iter()
        .map(|a| format!("\"{}\"", a.replace('"', "\\\"")))
        .collect();
    format!("migrate = {{ run = [{}]{extra} }}", argv.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_runs_once_per_deploy_and_guards_the_rollback() {
    let pg = Postgres::start().await.unwrap_or_else(|e| panic!("{e}"));
    pg.psql("CREATE TABLE ran (version text, at timestamptz DEFAULT now())")
        .unwrap();
    let shop = Shop::start(
        "rolling",
        &["n1", "n2", "n3"],
        &migrate(&pg, "INSERT INTO ran (version) VALUES ('{version}')", ""),
    );
    assert_exit(&shop.deploy("1", &[]), 0);
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let out = shop.deploy("2", &[]);
    assert_exit(&out, 0);
    let report = load.stop().await;
    eprintln!(
        "rolling v1→v2 with a migration: {} requests, {} failed",
        report.sent, report.failed
    );
    assert_eq!(
        report.failed,
        0,
        "{:?}",
        &report.failures[..report.failures.len().min(5)]
    );
    assert_eq!(
        pg.psql("SELECT version FROM ran ORDER BY at").unwrap(),
        "1\n2",
        "once per deploy, not once per node"
    );
    // The migration ran before the first node got v2.
    let journal = shop.run(&["history", "shop", "--deploy", "2"]);
    let journal = String::from_utf8_lossy(&journal.stdout).to_string();
    let migrate_at = journal
        .find("migrate the database for 2")
        .expect("journaled");
    let first_start = journal.find("start n").expect("a start");
    assert!(migrate_at < first_start, "{journal}");

    // A rollback past it (not reversible) is refused, and allowed when forced.
    let out = shop.run(&["rollback", "shop"]);
    assert_exit(&out, 3);
    assert!(
        text(&out).contains("--force-past-migration"),
        "{}",
        text(&out)
    );
    assert_eq!(shop.versions_now(5).await, ["2".to_string()].into());
    let out = shop.run(&["rollback", "shop", "--force-past-migration"]);
    assert_exit(&out, 0);
    assert_eq!(shop.versions_now(5).await, ["1".to_string()].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_migration_leaves_the_old_release_serving() {
    let pg = Postgres::start().await.unwrap_or_else(|e| panic!("{e}"));
    let shop = Shop::start(
        "rolling",
        &["n1", "n2", "n3"],
        &migrate(&pg, "SELECT 1", ""),
    );
    assert_exit(&shop.deploy("1", &[]), 0);
    let config = std::fs::read_to_string(shop.proxy.config_path()).unwrap();
    std::fs::write(
        shop.proxy.config_path(),
        config.replace("SELECT 1", "ALTER TABLE missing ADD COLUMN x int"),
    )
    .unwrap();
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let out = shop.deploy("2", &[]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("the migration of 2 failed"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("missing"),
        "psql's own words: {}",
        text(&out)
    );
    let report = load.stop().await;
    eprintln!(
        "failing migration: {} requests, {} failed",
        report.sent, report.failed
    );
    assert_eq!(report.failed, 0);
    assert_eq!(shop.versions_now(5).await, ["1".to_string()].into());
    assert!(
        !text(&out).contains("start n1 2"),
        "nothing got v2: {}",
        text(&out)
    );
}
