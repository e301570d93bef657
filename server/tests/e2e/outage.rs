//! PostgreSQL goes away under a running export and comes back: a cluster of the test's own
//! (the shared one serves every other test), stopped for a few seconds mid-stream and started
//! again on the same port, under the built `exportd serve`.

use std::time::{Duration, Instant};

use contact_export_client::{Export, ExportStatus};
use contact_export_devkit::postgres::{Cluster, StartOptions};
use futures::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::exportd::{Exportd, Replica};
use super::fixture::Workspace;
use super::harness::{TestDb, create_database, within};
use super::{all_contacts, download_all};

/// Contacts of the export.
const ROWS: i64 = 40_000;

/// How long the database stays down.
const OUTAGE: Duration = Duration::from_secs(4);

async fn health(addr: std::net::SocketAddr) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("the replica takes connections");
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers without the database");
    reply.into_inner().status()
}

async fn wait_for_health(addr: std::net::SocketAddr, wanted: ServingStatus) -> Duration {
    let started = Instant::now();
    within("the health status to change", async {
        while health(addr).await != wanted {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_survives_postgresql_stopping_for_a_few_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = dir.path().join("pg");
    let mut cluster = tokio::task::spawn_blocking(move || {
        Cluster::start_with(&cluster_dir, &StartOptions::default())
    })
    .await
    .unwrap()
    .expect("a cluster of the test's own");
    let url = create_database(
        &cluster.url("postgres"),
        &cluster
            .url("dbplaceholder")
            .replace("dbplaceholder", "{db}"),
        "outage",
    )
    .await;
    let db = TestDb { url: url.clone() };
    let storage = dir.path().join("files");
    std::fs::create_dir(&storage).unwrap();
    let mut replica = Replica::new(&url, &storage);
    // A lease longer than the outage: the replica keeps its job through it.
    replica.lease_seconds = 15;
    // More rows than the sockets between them buffer (about 10 MB), read slowly: the outage
    // cuts the COPY itself, not only the writes beside it.
    replica.batch_size = 500;
    replica.faults = Some("batch-delay-ms=40".to_owned());
    let exportd = Exportd::start(&replica).await;
    let ws = Workspace::create(&db, exportd.addr, false).await;
    super::replicas::seed(&db, ws.id, ROWS).await;
    assert_eq!(health(exportd.addr).await, ServingStatus::Serving);

    let created = ws.client.create(all_contacts()).await.unwrap();
    let mut watch = ws.client.watch(&created.id).await.unwrap();
    let mut seen: Vec<Export> = Vec::new();
    within("the export to be mid-stream", async {
        while let Some(export) = watch.next().await {
            let export = export.unwrap();
            let far = export.processed_rows >= 2000;
            seen.push(export);
            if far {
                return;
            }
        }
        panic!("the watch ended early");
    })
    .await;

    cluster = tokio::task::spawn_blocking(move || {
        cluster.stop().expect("stopping PostgreSQL");
        cluster
    })
    .await
    .unwrap();
    let stopped = Instant::now();
    let drained_in = wait_for_health(exportd.addr, ServingStatus::NotServing).await;
    tokio::time::sleep(OUTAGE.saturating_sub(stopped.elapsed())).await;
    cluster = tokio::task::spawn_blocking(move || {
        cluster.restart().expect("starting PostgreSQL again");
        cluster
    })
    .await
    .unwrap();
    let back = Instant::now();
    let serving_in = wait_for_health(exportd.addr, ServingStatus::Serving).await;

    // The watch opened before the outage goes on to the end, without an error.
    let attempt_before = seen.last().unwrap().attempt;
    let mut resumed_in = None;
    within("the export to finish after the outage", async {
        while let Some(export) = watch.next().await {
            let export = export.expect("the watch survives the outage");
            if export.attempt > attempt_before && resumed_in.is_none() {
                resumed_in = Some(back.elapsed());
            }
            seen.push(export);
        }
    })
    .await;
    let done = seen.last().unwrap().clone();
    let completed_in = back.elapsed();
    eprintln!(
        "PostgreSQL down {:.1} s mid-stream: health NOT_SERVING {:.1} s after the stop, SERVING \
         {:.1} s after the start; the stream started again {:.1} s after the start and the \
         export was COMPLETED {:.1} s after it, attempt {}",
        OUTAGE.as_secs_f64(),
        drained_in.as_secs_f64(),
        serving_in.as_secs_f64(),
        resumed_in.unwrap_or_default().as_secs_f64(),
        completed_in.as_secs_f64(),
        done.attempt
    );
    assert_eq!(done.status(), ExportStatus::Completed, "{seen:#?}");
    assert_eq!((done.total_rows, done.processed_rows), (ROWS, ROWS));
    assert!(
        done.attempt >= 2,
        "the stream read from a fresh snapshot: {done:?}"
    );
    assert!(
        completed_in < Duration::from_secs(12),
        "resumed within seconds of the database's return: {completed_in:?}"
    );
    assert!(
        seen.iter()
            .filter(|e| e.status() == ExportStatus::Processing)
            .count()
            >= 5,
        "watchers saw progress: {seen:#?}"
    );
    let file = download_all(&ws.client, &done.id).await;
    let records = csv::Reader::from_reader(file.as_bytes()).records().count();
    assert_eq!(records as i64, ROWS);
    drop(exportd);
    tokio::task::spawn_blocking(move || cluster.destroy())
        .await
        .unwrap()
        .unwrap();
}
