//! The request path, phase by phase: [`admit`](super::admit) (identify, classify, read,
//! estimate, reserve, or refuse), [`forward`](super::forward) (send upstream, or settle a call
//! that got no answer), and [`meter`](super::meter) (stream the answer back while reading its
//! usage, and settle at the end).

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use super::reply::ProxyBody;
use super::{admit, forward};
use crate::app::App;
use crate::upstream::route::Route;

/// Handles one data-plane request. `fixed_route` is set on a provider's dedicated listener.
pub async fn handle(app: Arc<App>, req: Request<Incoming>, fixed_route: Option<Arc<Route>>) -> Response<ProxyBody> {
    let started = Instant::now();
    let runtime = app.runtime();
    match admit::admit(&app, &runtime, req, fixed_route, started).await {
        Ok(admitted) => forward::forward(&runtime, admitted).await,
        Err(answer) => answer,
    }
}
