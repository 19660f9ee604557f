//! The console's web side (axum): the page's files and the live
//! connection, every request through the [`Guard`] first.
//!
//! `GET /?token=T` starts a session; `GET /`, `/app.js`, `/style.css` and
//! `/i18n/*.json` are the page; `GET /live` is a WebSocket that carries
//! the counsellor's events to the page (JSON, one object per message, as
//! `fluister counsellor --json` prints them, plus the console's own) and
//! the page's commands back. One page at a time: a new live connection
//! replaces the last, which is told `replaced`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::ws::{Message, WebSocket};
use axum::extract::{FromRequest, Request, State, WebSocketUpgrade};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::guard::{Guard, Verdict};
use super::{Shared, lock, replies};
use crate::client::chat::EVENTS_VERSION;
use crate::client::machine::Input;
use crate::client::machine::coding::Choice;
use crate::client::machine::counsellor::Command;
use crate::core::coding::Month;
use crate::core::frame::{Label, TransferTarget};

/// The built page, compiled in.
const PAGE: &[(&str, &str, &[u8])] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../../web/dist/console/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/dist/console/app.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/dist/console/style.css"),
    ),
    (
        "/i18n/nl.json",
        "application/json",
        include_bytes!("../../web/dist/console/i18n/nl.json"),
    ),
    (
        "/i18n/en.json",
        "application/json",
        include_bytes!("../../web/dist/console/i18n/en.json"),
    ),
];

/// The largest message the page sends (a chat message is at most 4,000
/// characters; the replies list at most 50 × 500).
const MAX_PAGE_MESSAGE: usize = 128 * 1024;

/// Live lines waiting for a page before it is let go.
const LIVE_QUEUE: usize = 1024;

#[derive(Clone)]
struct Console {
    hub: Shared,
    guard: Arc<Mutex<Guard>>,
}

/// Serves until aborted.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    hub: Shared,
    guard: Arc<Mutex<Guard>>,
) {
    let router = Router::new()
        .fallback(guarded)
        .with_state(Console { hub, guard });
    let _ = axum::serve(listener, router).await;
}

/// Every request: the guard, then the page or the live connection.
async fn guarded(State(console): State<Console>, request: Request) -> Response {
    let verdict = {
        let mut guard = console.guard.lock().unwrap_or_else(|e| e.into_inner());
        guard.check(
            request.method(),
            request.uri().path(),
            request.uri().query(),
            request.headers(),
        )
    };
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let response = match verdict {
        Verdict::Refuse(status, why) => (status, format!("{why}\n")).into_response(),
        Verdict::StartSession { cookie } => {
            let mut response = (StatusCode::SEE_OTHER, "").into_response();
            let headers = response.headers_mut();
            headers.insert(header::LOCATION, HeaderValue::from_static("/"));
            if let Ok(cookie) = HeaderValue::from_str(&cookie) {
                headers.insert(header::SET_COOKIE, cookie);
            }
            response
        }
        Verdict::Pass if request.uri().path() == "/live" => {
            match WebSocketUpgrade::from_request(request, &()).await {
                Ok(upgrade) => {
                    let hub = console.hub.clone();
                    upgrade
                        .max_message_size(MAX_PAGE_MESSAGE)
                        .on_failed_upgrade(|_| {})
                        .on_upgrade(move |socket| live(socket, hub))
                }
                Err(refused) => refused.into_response(),
            }
        }
        Verdict::Pass => match PAGE.iter().find(|(path, ..)| *path == request.uri().path()) {
            Some((_, kind, body)) => {
                let mut response = body.to_vec().into_response();
                let headers = response.headers_mut();
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
                if let Ok(csp) = HeaderValue::from_str(&policy(&host)) {
                    headers.insert(header::CONTENT_SECURITY_POLICY, csp);
                }
                response
            }
            None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
        },
    };
    with_privacy_headers(response)
}

/// The page may load only its own files and talk only to its own console.
fn policy(host: &str) -> String {
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self' ws://{host}; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
}

fn with_privacy_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// What the page asks for (web/console/README in `web/README.md`).
#[derive(Debug, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
enum PageCommand {
    Say {
        chat: u32,
        text: String,
    },
    End {
        chat: u32,
    },
    Block {
        chat: u32,
    },
    /// `to`: a colleague's pseudonym, or `"queue"`.
    Transfer {
        chat: u32,
        to: String,
    },
    Available {
        available: bool,
    },
    Capacity {
        capacity: u8,
    },
    Replies {
        replies: Vec<String>,
    },
    /// Code a chat that ended: `(field, value)` names from the form, and
    /// the month if not the current one. The page sends no chat number.
    Code {
        values: Vec<PageChoice>,
        #[serde(default)]
        month: Option<String>,
    },
    /// Send the codings held now.
    CodeSend,
    SignOut,
}

/// One field's chosen value in a `code` command.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageChoice {
    field: String,
    value: String,
}

/// The line that tells the page the console has stopped.
pub(super) fn signed_out_line() -> String {
    json!({"event": "signed_out", "v": EVENTS_VERSION}).to_string()
}

fn console_error(message: &str) -> String {
    json!({"event": "error", "message": message, "fatal": false, "code": "bad_command", "v": EVENTS_VERSION})
        .to_string()
}

/// One live connection: the board replayed, then events as they come;
/// commands the other way.
async fn live(mut socket: WebSocket, hub: Shared) {
    let (tx, mut rx) = mpsc::channel::<String>(LIVE_QUEUE);
    let (number, links_made, opening) = {
        let mut hub = lock(&hub);
        // The page open until now is let go (its sender dropped).
        hub.lives_opened += 1;
        let number = hub.lives_opened;
        hub.live = Some((number, tx));
        let mut lines = vec![
            json!({
                "event": "console",
                "pseudonym": hub.pseudonym,
                "replies": hub.replies,
                "v": EVENTS_VERSION,
            })
            .to_string(),
        ];
        lines.extend(hub.board.replay(Instant::now()));
        if hub.finished {
            lines.push(signed_out_line());
        }
        (number, hub.links_made, lines)
    };
    for line in opening {
        if socket.send(Message::Text(line.into())).await.is_err() {
            return;
        }
    }
    loop {
        tokio::select! {
            line = rx.recv() => match line {
                Some(line) => {
                    if socket.send(Message::Text(line.into())).await.is_err() {
                        return;
                    }
                }
                None => {
                    // Another page took over or a new link was made (the
                    // page stops), the page fell behind (it reconnects and
                    // gets the board replayed), or the console stopped.
                    if lock(&hub).replaced(number, links_made) {
                        let replaced = json!({"event": "replaced", "v": EVENTS_VERSION}).to_string();
                        let _ = socket.send(Message::Text(replaced.into())).await;
                    }
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
            },
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => {
                    if let Some(answer) = command(&hub, text.as_str()).await {
                        let _ = socket.send(Message::Text(answer.into())).await;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Binary(_))) => {
                    let _ = socket.send(Message::Text(console_error("commands are JSON text").into())).await;
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
            },
        }
    }
}

/// Carries out one command from the page; an answer for this page only,
/// if there is one.
async fn command(hub: &Shared, text: &str) -> Option<String> {
    let command: PageCommand = match serde_json::from_str(text) {
        Ok(command) => command,
        Err(e) => return Some(console_error(&format!("not a console command: {e}"))),
    };
    let input = match command {
        PageCommand::Say { chat, text } => {
            if text.trim().is_empty() {
                return Some(console_error("an empty message is not sent"));
            }
            Command::Say(Some(chat), text)
        }
        PageCommand::End { chat } => Command::End(Some(chat)),
        PageCommand::Block { chat } => Command::Block(Some(chat)),
        PageCommand::Transfer { chat, to } => {
            let target = if to == "queue" {
                TransferTarget::Queue
            } else {
                match Label::new(&to) {
                    Ok(name) => TransferTarget::Colleague(name),
                    Err(e) => {
                        return Some(console_error(&format!(
                            "{to:?} cannot be a counsellor's name: it {e}"
                        )));
                    }
                }
            };
            Command::Transfer(Some(chat), target)
        }
        PageCommand::Available { available } => Command::Available(available),
        PageCommand::Capacity { capacity: 0 } => {
            return Some(console_error("capacity is at least 1"));
        }
        PageCommand::Capacity { capacity } => Command::Capacity(capacity),
        PageCommand::Replies { replies: list } => {
            let path = lock(hub).replies_path.clone();
            let saved = {
                let list = list.clone();
                tokio::task::spawn_blocking(move || replies::save(&path, &list)).await
            };
            return match saved {
                Ok(Ok(())) => {
                    let mut hub = lock(hub);
                    hub.replies = list;
                    let line =
                        json!({"event": "replies", "replies": hub.replies, "v": EVENTS_VERSION})
                            .to_string();
                    hub.tell(line);
                    None
                }
                Ok(Err(e)) => Some(console_error(&format!("the replies were not saved: {e}"))),
                Err(_) => Some(console_error("the replies were not saved")),
            };
        }
        PageCommand::Code { values, month } => {
            let month = match month.as_deref().map(Month::parse) {
                None => None,
                Some(Some(month)) => Some(month),
                Some(None) => return Some(console_error("a coding's month is YYYY-MM")),
            };
            let choices = values
                .into_iter()
                .map(|c| Choice {
                    field: c.field,
                    value: c.value,
                })
                .collect();
            Command::Code(choices, month)
        }
        PageCommand::CodeSend => Command::CodeSend,
        PageCommand::SignOut => {
            lock(hub).input = None;
            return None;
        }
    };
    let input_tx = lock(hub).input.clone();
    match input_tx {
        Some(tx) => {
            if tx.send(Input::Command(input)).await.is_err() {
                return Some(console_error("the console is signing out"));
            }
            None
        }
        None => Some(console_error("the console is signing out")),
    }
}
