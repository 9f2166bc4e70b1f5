//! `pmcluster-testapp`: a small, controllable HTTP app that the pmcluster
//! integration tests supervise.
//!
//! It listens with HTTP/1.1 on `$TESTAPP_BIND:$PORT` (default bind host
//! `127.0.0.1`) and offers endpoints that let a test drive the behaviours a
//! process manager must handle: health checks, CPU burn, memory growth,
//! crashes with a given exit code, slow in-flight requests during graceful
//! shutdown, log output and grandchild processes.
//!
//! Endpoints (all `GET`):
//! - `/` and `/health`: `{"status":"ok","instance":..,"pid":..,"version":..,"port":..}`
//! - `/burn?ms=N`: busy-loop N ms on a blocking thread (N capped at 600000)
//! - `/hold?mib=N`: allocate and touch N MiB, kept until exit (accumulates)
//! - `/exit?code=N`: answer, then exit with code N about 50 ms later
//! - `/sleep?ms=N`: wait N ms, then answer
//! - `/log?n=N&stream=stdout|stderr`: write `line 1` .. `line N`
//! - `/spawn-child`: spawn `sleep 1000` in the same process group; `?env=clear`: with an empty
//!   environment (as `env -i` does: no marker of the agent's)
//!
//! Environment:
//! - `PORT` (required unless `TESTAPP_NO_LISTEN=1`; `0` picks a free port)
//! - `TESTAPP_BIND` bind host, default `127.0.0.1`
//! - `TESTAPP_VERSION` version string, default `v1`
//! - `PMCLUSTER_INSTANCE_ID` instance id, default `-`
//! - `TESTAPP_IGNORE_SIGTERM=1` ignore SIGTERM (SIGINT still stops)
//! - `TESTAPP_FAIL_HEALTH=1` make `/health` answer 503
//! - `TESTAPP_STARTUP_DELAY_MS=N` sleep N ms before binding
//! - `TESTAPP_NO_LISTEN=1` do not listen; print a line every second
//!
//! - `TESTAPP_LEAK_KIB_PER_SEC=N` allocate and touch N KiB every 100 ms / 10,
//!   kept until exit: a steady leak
//!
//! SIGUSR1, SIGUSR2 and SIGHUP are reported on stdout (`testapp got SIGUSR2`)
//! and otherwise ignored.
//!
//! On SIGTERM or SIGINT it stops accepting connections, lets in-flight
//! requests finish (up to 30 s), prints `testapp shutting down` and exits 0.

use std::convert::Infallible;
use std::io::{self, Write};
use std::process::{ExitCode, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};

const MAX_BURN_MS: u64 = 600_000;
const MAX_SLEEP_MS: u64 = 3_600_000;
const MAX_HOLD_MIB: usize = 64 * 1024;
const MAX_LOG_LINES: u64 = 1_000_000;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_DELAY: Duration = Duration::from_millis(50);

type Resp = Response<Full<Bytes>>;

/// Settings read from the environment once at start.
struct Config {
    bind: String,
    port: u16,
    version: String,
    instance: String,
    ignore_sigterm: bool,
    fail_health: bool,
    startup_delay: Duration,
    no_listen: bool,
    leak_kib_per_sec: usize,
}

/// State shared by all requests.
struct State {
    config: Config,
    /// The port actually bound (differs from `config.port` when that is 0).
    port: u16,
    /// Memory kept alive by `/hold`.
    held: Mutex<Vec<Vec<u8>>>,
}

/// SIGTERM and SIGINT listeners, installed before anything else so that an
/// early signal is never lost.
struct Signals {
    term: Signal,
    int: Signal,
    ignore_term: bool,
}

impl Signals {
    fn install(ignore_term: bool) -> io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            ignore_term,
        })
    }

    /// Waits for a signal that should stop the app and returns its name.
    async fn stopping(&mut self) -> &'static str {
        loop {
            tokio::select! {
                _ = self.term.recv() => {
                    if !self.ignore_term {
                        return "SIGTERM";
                    }
                    say_err("testapp ignoring SIGTERM");
                }
                _ = self.int.recv() => return "SIGINT",
            }
        }
    }
}

/// Prints each SIGUSR1, SIGUSR2 and SIGHUP it gets, so a test sees them in the logs.
fn report_user_signals() -> io::Result<()> {
    for (kind, name) in [
        (SignalKind::user_defined1(), "SIGUSR1"),
        (SignalKind::user_defined2(), "SIGUSR2"),
        (SignalKind::hangup(), "SIGHUP"),
    ] {
        let mut s = signal(kind)?;
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                say(&format!("testapp got {name}"));
            }
        });
    }
    Ok(())
}

/// Grows resident memory by `kib_per_sec` KiB a second, in ten steps, until exit.
async fn leak(kib_per_sec: usize) {
    let step = (kib_per_sec * 1024 / 10).max(1);
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let mut every = tokio::time::interval(Duration::from_millis(100));
    loop {
        every.tick().await;
        // Touched, so the pages are resident and not just reserved.
        kept.push(vec![0x5a; step]);
    }
}

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("pmcluster-testapp: {msg}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pmcluster-testapp: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pmcluster-testapp: {e}");
            ExitCode::FAILURE
        }
    }
}

impl Config {
    fn from_env() -> Result<Self, String> {
        let flag = |name: &str| std::env::var(name).is_ok_and(|v| v == "1");
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or(default.to_owned());
        let no_listen = flag("TESTAPP_NO_LISTEN");
        let port = match std::env::var("PORT") {
            Ok(p) => p
                .trim()
                .parse::<u16>()
                .map_err(|_| format!("invalid PORT {p:?}: expected 0..=65535"))?,
            Err(_) if no_listen => 0,
            Err(_) => return Err("PORT environment variable is required".to_owned()),
        };
        let startup_delay = match std::env::var("TESTAPP_STARTUP_DELAY_MS") {
            Ok(v) => Duration::from_millis(
                v.trim()
                    .parse()
                    .map_err(|_| format!("invalid TESTAPP_STARTUP_DELAY_MS {v:?}"))?,
            ),
            Err(_) => Duration::ZERO,
        };
        Ok(Self {
            bind: var("TESTAPP_BIND", "127.0.0.1"),
            port,
            version: var("TESTAPP_VERSION", "v1"),
            instance: var("PMCLUSTER_INSTANCE_ID", "-"),
            ignore_sigterm: flag("TESTAPP_IGNORE_SIGTERM"),
            fail_health: flag("TESTAPP_FAIL_HEALTH"),
            startup_delay,
            no_listen,
            leak_kib_per_sec: match std::env::var("TESTAPP_LEAK_KIB_PER_SEC") {
                Ok(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| format!("invalid TESTAPP_LEAK_KIB_PER_SEC {v:?}"))?,
                Err(_) => 0,
            },
        })
    }
}

async fn run(config: Config) -> io::Result<()> {
    let mut signals = Signals::install(config.ignore_sigterm)?;
    report_user_signals()?;
    if config.leak_kib_per_sec > 0 {
        tokio::spawn(leak(config.leak_kib_per_sec));
    }

    if !config.startup_delay.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(config.startup_delay) => {}
            _ = signals.stopping() => {
                say("testapp shutting down");
                return Ok(());
            }
        }
    }

    if config.no_listen {
        return run_without_listener(&config, &mut signals).await;
    }

    let listener = TcpListener::bind((config.bind.as_str(), config.port))
        .await
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot bind {}:{}: {e}", config.bind, config.port),
            )
        })?;
    let port = listener.local_addr()?.port();
    say(&format!(
        "testapp listening on {}:{port} instance={} version={} pid={}",
        config.bind,
        config.instance,
        config.version,
        std::process::id()
    ));
    let state = Arc::new(State {
        config,
        port,
        held: Mutex::new(Vec::new()),
    });

    let graceful = GracefulShutdown::new();
    let signal_name = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // E.g. EMFILE: back off briefly instead of spinning.
                        say_err(&format!("testapp accept error: {e}"));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let state = Arc::clone(&state);
                let service = service_fn(move |req| handle(req, Arc::clone(&state)));
                let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                // Connection errors (client hung up, ...) are not reported so
                // that stderr stays predictable for the log tests.
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            name = signals.stopping() => break name,
        }
    };

    drop(listener);
    say_err(&format!(
        "testapp got {signal_name}, draining {} connection(s)",
        graceful.count()
    ));
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        say_err("testapp drain timed out after 30s");
    }
    say("testapp shutting down");
    Ok(())
}

/// `TESTAPP_NO_LISTEN=1`: a port-less app that just ticks until signalled.
async fn run_without_listener(config: &Config, signals: &mut Signals) -> io::Result<()> {
    say(&format!(
        "testapp running without listener instance={} version={} pid={}",
        config.instance,
        config.version,
        std::process::id()
    ));
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut tick: u64 = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                tick += 1;
                say(&format!("testapp tick {tick}"));
            }
            _ = signals.stopping() => break,
        }
    }
    say("testapp shutting down");
    Ok(())
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Resp, Infallible> {
    if req.method() != Method::GET {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is supported",
        ));
    }
    let query = req.uri().query().unwrap_or("");
    let resp = match req.uri().path() {
        "/" => Ok(status_json(&state, StatusCode::OK)),
        "/health" if state.config.fail_health => {
            Ok(status_json(&state, StatusCode::SERVICE_UNAVAILABLE))
        }
        "/health" => Ok(status_json(&state, StatusCode::OK)),
        "/burn" => burn(query).await,
        "/hold" => hold(query, &state).await,
        "/exit" => exit_soon(query),
        "/sleep" => sleep(query).await,
        "/log" => log(query).await,
        "/spawn-child" => spawn_child(query),
        _ => Err(fail(StatusCode::NOT_FOUND, "not found")),
    };
    Ok(resp.unwrap_or_else(|Failure(status, msg)| text(status, &msg)))
}

fn status_json(state: &State, status: StatusCode) -> Resp {
    let word = if status.is_success() { "ok" } else { "failing" };
    json_resp(
        status,
        &json!({
            "status": word,
            "instance": state.config.instance,
            "pid": std::process::id(),
            "version": state.config.version,
            "port": state.port,
        }),
    )
}

async fn burn(query: &str) -> Result<Resp, Failure> {
    let ms = param::<u64>(query, "ms")?.min(MAX_BURN_MS);
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_millis(ms);
        let mut x: u64 = 0;
        while Instant::now() < deadline {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
    })
    .await
    .map_err(|e| {
        fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("burn failed: {e}"),
        )
    })?;
    Ok(json_resp(StatusCode::OK, &json!({ "burned_ms": ms })))
}

async fn hold(query: &str, state: &Arc<State>) -> Result<Resp, Failure> {
    let mib = param::<usize>(query, "mib")?;
    if mib > MAX_HOLD_MIB {
        return Err(bad_request(&format!("mib must be at most {MAX_HOLD_MIB}")));
    }
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || {
        let bytes = mib * 1024 * 1024;
        let mut block = Vec::new();
        block.try_reserve_exact(bytes).map_err(|e| {
            fail(
                StatusCode::INSUFFICIENT_STORAGE,
                &format!("allocation failed: {e}"),
            )
        })?;
        // Writing non-zero bytes touches every page, so RSS really grows.
        block.resize(bytes, 0xA5);
        let mut held = state.held.lock().unwrap_or_else(|p| p.into_inner());
        held.push(block);
        let total: usize = held.iter().map(Vec::len).sum::<usize>() / (1024 * 1024);
        Ok(json_resp(StatusCode::OK, &json!({ "held_mib": total })))
    })
    .await
    .map_err(|e| {
        fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("hold failed: {e}"),
        )
    })?
}

fn exit_soon(query: &str) -> Result<Resp, Failure> {
    let code = param::<i32>(query, "code")?;
    tokio::spawn(async move {
        tokio::time::sleep(EXIT_DELAY).await;
        let _ = io::stdout().flush();
        std::process::exit(code);
    });
    Ok(json_resp(StatusCode::OK, &json!({ "exiting": code })))
}

async fn sleep(query: &str) -> Result<Resp, Failure> {
    let ms = param::<u64>(query, "ms")?.min(MAX_SLEEP_MS);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(json_resp(StatusCode::OK, &json!({ "slept_ms": ms })))
}

async fn log(query: &str) -> Result<Resp, Failure> {
    let n = param::<u64>(query, "n")?;
    if n > MAX_LOG_LINES {
        return Err(bad_request(&format!("n must be at most {MAX_LOG_LINES}")));
    }
    let to_stderr = match query_value(query, "stream") {
        None | Some("stdout") => false,
        Some("stderr") => true,
        Some(_) => return Err(bad_request("stream must be stdout or stderr")),
    };
    // A full pipe may block the write, so do it off the async executor.
    let written = tokio::task::spawn_blocking(move || -> io::Result<()> {
        let mut out: Box<dyn Write> = if to_stderr {
            Box::new(io::stderr().lock())
        } else {
            Box::new(io::stdout().lock())
        };
        for i in 1..=n {
            writeln!(out, "line {i}")?;
        }
        out.flush()
    })
    .await;
    match written {
        Ok(Ok(())) => {
            let stream = if to_stderr { "stderr" } else { "stdout" };
            Ok(json_resp(
                StatusCode::OK,
                &json!({ "logged": n, "stream": stream }),
            ))
        }
        Ok(Err(e)) => Err(fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("write failed: {e}"),
        )),
        Err(e) => Err(fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("log failed: {e}"),
        )),
    }
}

fn spawn_child(query: &str) -> Result<Resp, Failure> {
    // Same process group as us (no setsid), so a group kill reaches it.
    // tokio reaps the child in the background once the handle is dropped.
    let mut command = tokio::process::Command::new("sleep");
    if query_value(query, "env") == Some("clear") {
        // Without PATH, `sleep` is looked for in the default path (/bin:/usr/bin).
        command.env_clear();
    }
    let child = command
        .arg("1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("spawn failed: {e}"),
            )
        })?;
    let pid = child.id().unwrap_or(0);
    Ok(json_resp(StatusCode::OK, &json!({ "child_pid": pid })))
}

/// Returns the raw value of `key` in a `a=1&b=2` query string.
fn query_value<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Parses the required query parameter `key`, or yields a 400 response.
fn param<T: FromStr>(query: &str, key: &str) -> Result<T, Failure> {
    let raw = query_value(query, key)
        .ok_or_else(|| bad_request(&format!("missing query parameter {key}")))?;
    raw.parse()
        .map_err(|_| bad_request(&format!("invalid value for {key}: {raw:?}")))
}

fn bad_request(msg: &str) -> Failure {
    fail(StatusCode::BAD_REQUEST, msg)
}

/// A failed request: its status and a short plain-text message.
struct Failure(StatusCode, String);

fn fail(status: StatusCode, msg: &str) -> Failure {
    Failure(status, msg.to_owned())
}

fn text(status: StatusCode, msg: &str) -> Resp {
    respond(status, "text/plain; charset=utf-8", format!("{msg}\n"))
}

fn json_resp(status: StatusCode, body: &Value) -> Resp {
    respond(status, "application/json", body.to_string())
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Prints a line to stdout and flushes; a closed stdout is not fatal.
fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Prints a line to stderr; a closed stderr is not fatal.
fn say_err(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}
