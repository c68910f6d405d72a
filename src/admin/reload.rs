//! `POST /v1/reload`: read the config file again now. A broken file leaves the running
//! configuration in force and answers 400 with the parser's message.

use std::sync::Arc;

use http::{Response, StatusCode};
use serde_json::json;

use super::AdminBody;
use crate::app::App;

pub async fn reload(app: &Arc<App>, who: &super::auth::Principal) -> Response<AdminBody> {
    if app.config_path.is_none() {
        return super::error(
            StatusCode::CONFLICT,
            "no_config_file",
            "the proxy runs on a configuration given at start-up, not a file; there is nothing to reload",
        );
    }
    let app2 = app.clone();
    let name = who.name.clone();
    // Reading and compiling the file is blocking work.
    let result = match tokio::task::spawn_blocking(move || app2.reload_by(&name)).await {
        Ok(r) => r,
        Err(e) => return super::error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &format!("reload did not finish: {e}")),
    };
    match result {
        Ok(()) => super::json(StatusCode::OK, &json!({"status": "reloaded"})),
        Err(e) => super::json(
            StatusCode::BAD_REQUEST,
            &json!({"error": {
                "type": "config_invalid",
                "message": e.to_string(),
                "source": e.source_name,
                "key": e.key,
                "line": e.line,
            }}),
        ),
    }
}
