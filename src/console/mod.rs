//! The counsellor's console: the Rust counsellor client with a web UI on
//! loopback (`fluister console`).
//!
//! One process holds the counsellor's identity and speaks native QUIC to
//! the relay through the counsellor's state machine and the client driver,
//! as `fluister counsellor` does; the browser never sees a key or the
//! sign-in credential. Data flows:
//!
//! ```text
//! relay ⇄ QUIC ⇄ driver + Counsellor machine ─events→ Board ─JSON→ live WebSocket ⇄ page
//!                        ↑                                                          │
//!                        └──────────── Input::Command ←── page commands ←───────────┘
//! ```
//!
//! [`guard`] decides who may load the page and open the live connection (a
//! one-time link, `Host` and `Origin`); [`board`] keeps what a page that
//! opens late must be told, and forgets each chat when it ends; [`replies`]
//! reads and writes the canned replies, the only file the console writes.
//! [`server`] is the axum side: the page's files (built from `web/console/`
//! into `web/dist/console/` and compiled in) and the live connection, one
//! at a time. The console keeps nothing of a chat on disk or in the
//! browser: no transcript, no storage, `Cache-Control: no-store`.

pub mod board;
pub mod guard;
pub mod replies;
mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::client::chat::{self, ChatEvent, CounsellorSettings};
use crate::client::machine::Input;
use crate::client::{ClientError, RelayStream};
use crate::crypto::e2e::CounsellorKeys;
use board::Board;
use guard::Guard;

/// How the console serves its page.
#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    /// Where to listen; loopback unless `beyond_loopback`.
    pub listen: SocketAddr,
    /// The counsellor insisted on listening beyond loopback.
    pub beyond_loopback: bool,
    /// The canned replies' file.
    pub replies: PathBuf,
    /// Open the link in the desktop's browser.
    pub open: bool,
}

/// What the page and the client share.
pub(crate) struct Hub {
    pub board: Board,
    /// The one live connection, if a page is open, by its number.
    pub live: Option<(u64, mpsc::Sender<String>)>,
    /// Live connections opened so far.
    pub lives_opened: u64,
    /// Links made so far: a new one ends the session of the last.
    pub links_made: u64,
    /// The client's input; dropped to sign out.
    pub input: Option<mpsc::Sender<Input>>,
    pub pseudonym: String,
    pub replies: Vec<String>,
    pub replies_path: PathBuf,
    /// The client has stopped; the page is told so.
    pub finished: bool,
}

impl Hub {
    /// Sends one line to the open page, if any. A page that does not keep
    /// up is let go; it reconnects and gets the board replayed.
    pub fn tell(&mut self, line: String) {
        if let Some((_, live)) = &self.live
            && live.try_send(line).is_err()
        {
            self.live = None;
        }
    }

    /// Why live connection `number`, opened after `links_made` links, was
    /// let go: `true` if it was replaced (by another page or a new link)
    /// and must stop; `false` if it fell behind or the console stopped.
    pub fn replaced(&self, number: u64, links_made: u64) -> bool {
        !self.finished
            && (self.links_made != links_made
                || self.live.as_ref().is_some_and(|(n, _)| *n != number))
    }
}

pub(crate) type Shared = Arc<Mutex<Hub>>;

/// Locks the hub; a panic elsewhere does not stop the console.
pub(crate) fn lock(hub: &Shared) -> std::sync::MutexGuard<'_, Hub> {
    hub.lock().unwrap_or_else(|e| e.into_inner())
}

/// The console's listener and replies, ready before the counsellor signs
/// in: a console that cannot serve its page must not take chats.
pub struct Prepared {
    listener: tokio::net::TcpListener,
    replies: Vec<String>,
    options: ConsoleOptions,
}

/// Checks the address, reads the replies and starts listening.
pub async fn prepare(options: ConsoleOptions) -> Result<Prepared, Box<dyn std::error::Error>> {
    guard::may_listen(options.listen, options.beyond_loopback)?;
    let replies = replies::load(&options.replies)?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
    Ok(Prepared {
        listener,
        replies,
        options,
    })
}

/// Runs the console until the counsellor signs out (in the page, or
/// Ctrl-C / SIGTERM here; a second one signs out at once).
pub async fn run(
    prepared: Prepared,
    relay: RelayStream,
    keys: CounsellorKeys,
    pseudonym: String,
    mut settings: CounsellorSettings,
) -> Result<(), Box<dyn std::error::Error>> {
    let Prepared {
        listener,
        replies,
        options,
    } = prepared;
    let addr = listener.local_addr()?;
    let mut guard = Guard::new(addr);
    let link = guard.new_link();
    let guard = Arc::new(Mutex::new(guard));

    let (input_tx, input_rx) = mpsc::channel::<Input>(64);
    let (events_tx, mut events_rx) = mpsc::channel::<ChatEvent>(256);
    let (quick_exit, exit_rx) = watch::channel(false);
    settings.quick_exit = Some(exit_rx);
    let hub: Shared = Arc::new(Mutex::new(Hub {
        board: Board::default(),
        live: None,
        lives_opened: 0,
        links_made: 1,
        input: Some(input_tx),
        pseudonym: pseudonym.clone(),
        replies,
        replies_path: options.replies.clone(),
        finished: false,
    }));

    let server = server::serve(listener, hub.clone(), guard.clone());
    let server = tokio::spawn(server);
    println!("Signed in as {pseudonym}. Open the console in your browser:");
    println!("  {link}");
    println!(
        "The link works once. Press Enter here for a new one (it closes the page that is open); \
         Ctrl-C signs out."
    );
    if options.open {
        open_in_browser(&link);
    }
    tokio::spawn(new_links_on_enter(guard, hub.clone()));
    tokio::spawn(sign_out_on_signal(hub.clone(), quick_exit));

    let pump_hub = hub.clone();
    let pump = tokio::spawn(async move {
        while let Some(event) = events_rx.recv().await {
            if matches!(event, ChatEvent::Help { .. } | ChatEvent::Chats { .. }) {
                continue;
            }
            let mut hub = lock(&pump_hub);
            hub.board.apply(Instant::now(), &event);
            hub.tell(board::to_json(&event, None));
        }
    });
    let result: Result<(), ClientError> =
        chat::run_counsellor(relay, keys, settings, input_rx, events_tx).await;
    let _ = pump.await;
    {
        let mut hub = lock(&hub);
        if let Err(e) = &result {
            let fatal = ChatEvent::fatal(e);
            hub.board.apply(Instant::now(), &fatal);
            hub.tell(board::to_json(&fatal, None));
        }
        hub.finished = true;
        hub.tell(server::signed_out_line());
        hub.live = None;
    }
    // Time for the page to read its last lines.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.abort();
    match result {
        Ok(()) => {
            println!("Signed out.");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Each line typed in the console's terminal prints a new link.
async fn new_links_on_enter(guard: Arc<Mutex<Guard>>, hub: Shared) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = lines.next_line().await {
        let link = guard.lock().unwrap_or_else(|e| e.into_inner()).new_link();
        // The page open now belongs to the old link.
        let mut hub = lock(&hub);
        hub.links_made += 1;
        hub.live = None;
        drop(hub);
        println!("A new link (the old one and its page no longer work):");
        println!("  {link}");
    }
}

/// The first Ctrl-C or SIGTERM signs out once the last messages are
/// confirmed; a second signs out at once.
async fn sign_out_on_signal(hub: Shared, quick_exit: watch::Sender<bool>) {
    let mut signals = 0;
    loop {
        crate::cli::wait_for_signal().await;
        signals += 1;
        if signals == 1 {
            eprintln!("Signing out (Ctrl-C again to leave at once)...");
            lock(&hub).input = None;
        } else {
            let _ = quick_exit.send(true);
            return;
        }
    }
}

/// Hands the link to the desktop's browser, if there is one.
fn open_in_browser(link: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    if std::process::Command::new(opener)
        .arg(link)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_err()
    {
        eprintln!("Could not start a browser ({opener}); open the link by hand.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Hub {
        Hub {
            board: Board::default(),
            live: None,
            lives_opened: 0,
            links_made: 1,
            input: None,
            pseudonym: "Sam".into(),
            replies: Vec::new(),
            replies_path: PathBuf::from("replies.txt"),
            finished: false,
        }
    }

    #[test]
    fn a_page_that_falls_behind_reconnects_and_a_replaced_one_stops() {
        let mut hub = hub();
        let (tx, _rx) = mpsc::channel(1);
        hub.live = Some((1, tx));
        hub.tell("one".into());
        // The queue is full: let go, but not replaced.
        hub.tell("two".into());
        assert!(hub.live.is_none());
        assert!(!hub.replaced(1, 1));
        // Another page took over.
        let (tx, _rx2) = mpsc::channel(1);
        hub.live = Some((2, tx));
        assert!(hub.replaced(1, 1) && !hub.replaced(2, 1));
        // A new link ends every page of the last one.
        hub.links_made = 2;
        hub.live = None;
        assert!(hub.replaced(2, 1));
        // Stopped: nothing is replaced any more.
        hub.finished = true;
        assert!(!hub.replaced(2, 1));
    }
}
