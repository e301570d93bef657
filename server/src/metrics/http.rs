//! `GET /metrics` over plain HTTP/1.1 (axum, which tonic already builds on); 404 elsewhere.

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics};
use crate::db::PgPool;

#[derive(Clone)]
struct Scrape {
    metrics: Metrics,
    pool: PgPool,
}

/// Serves scrapes on `listener` until `stop` fires, then finishes the scrapes in flight.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    pool: PgPool,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Scrape { metrics, pool });
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

async fn scrape(State(scrape): State<Scrape>) -> impl IntoResponse {
    let body = scrape.metrics.render(&scrape.pool).await;
    ([(CONTENT_TYPE, METRICS_CONTENT_TYPE)], body)
}
