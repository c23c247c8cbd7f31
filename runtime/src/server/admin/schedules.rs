//! Admin endpoints for schedules:
//!
//! * `GET  /v1/functions/{name}/schedules` — each `[[schedule]]`: what it is, its next
//!   slots, whether it is paused, its last fire and how it ended
//! * `POST /v1/functions/{name}/schedules/pause` — skip fires until resumed
//! * `POST /v1/functions/{name}/schedules/resume`
//!
//! In a cluster the scheduler forwards these to a node that hosts the function; the
//! records they read and change are the cluster's (the bus keeps them).

use crate::node::{Deployment, Node};
use http::{Method, StatusCode};
use skiff_core::api::ScheduleInfo;
use skiff_core::http::{Response, error, json};
use skiff_core::record::now_ms;
use std::sync::Arc;

/// How many next slots a listing shows.
const NEXT: usize = 3;

/// `.../schedules[/pause|/resume]`.
pub async fn schedules(
    node: &Node,
    deployment: Option<Arc<Deployment>>,
    name: &str,
    rest: &[&str],
    method: &Method,
) -> Response {
    let Some(d) = deployment else {
        return error(
            StatusCode::NOT_FOUND,
            format!("function `{name}` is not deployed here; list functions with `skiff ls`"),
        );
    };
    let pause = match (method, rest) {
        (&Method::GET, []) => None,
        (&Method::POST, ["pause"]) => Some(true),
        (&Method::POST, ["resume"]) => Some(false),
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "no such schedules endpoint; use GET /v1/functions/{name}/schedules or POST …/schedules/pause|resume"
                ),
            );
        }
    };
    if pause.is_some() && d.schedules.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("function `{name}` has no [[schedule]] to pause or resume"),
        );
    }
    let bus = node.bus();
    let mut out = Vec::new();
    for (index, s) in d.schedules.iter().enumerate() {
        let record = match pause {
            Some(paused) => {
                let edit: crate::events::RecordEdit = Arc::new(move |r| r.paused = paused);
                bus.update_schedule(name, index, edit).await.map(|(_, r)| r)
            }
            None => bus.schedule_record(name, index).await,
        };
        let record = match record {
            Ok(r) => r,
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        };
        let mut next_ms = Vec::new();
        let mut at = now_ms();
        while next_ms.len() < NEXT {
            match s.next_after(at) {
                Some(n) => {
                    next_ms.push(n);
                    at = n;
                }
                None => break,
            }
        }
        out.push(ScheduleInfo {
            function: name.to_string(),
            index,
            schedule: s.describe(),
            catch_up: format!("{:?}", s.catch_up).to_lowercase(),
            next_ms,
            record,
        });
    }
    if let Some(paused) = pause {
        tracing::info!(
            function = name,
            paused,
            "schedules paused or resumed by an operator"
        );
    }
    json(StatusCode::OK, &out)
}
