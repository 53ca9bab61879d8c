//! `refund-worker console`: the ops console, server-rendered HTML (maud) from axum, usable
//! without JavaScript. Every page but the sign-in page needs a session; every action carries
//! the session's CSRF token, is refused to read-only operators, and is recorded in the audit
//! log under the operator's name.
//!
//! Sign-in, the overview (queues, consumers, dead letters and money stuck, paused providers,
//! the audit head), dead letters grouped and searchable with a page per letter, replay of one
//! letter or of a group — always previewed first (a dry run), and for a group optionally as a
//! canary: one letter, its outcome awaited, then the rest only if it refunded — per-provider
//! pause and resume, and the audit log, which records the preview each action was confirmed on.

mod auth;
mod pages;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Form, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{CommandError, Context, runtime};
use crate::{
    broker::{self, Publisher, dead_letters::DeadLetterQueue, seal::Sealer},
    cli::{ConsoleArgs, ConsoleCommand, OperatorCommand},
    governance::mandate::rfc3339,
    job::ProviderName,
    store::{self, Controls},
};

use auth::hash_password;
use auth::{Auth, COOKIE, Session, cookie_token};

/// Dead letters read per page.
const READ_LIMIT: usize = 2_000;

/// What every handler shares: built once at start-up (keys parsed, Redis connected, provider
/// clients made), not per request.
struct Console {
    ctx: Context,
    auth: Auth,
    sealer: Sealer,
    /// One reconnecting Redis connection for every page.
    redis: redis::aio::ConnectionManager,
    /// Signs receipts (read here: chain verification) and the audit log.
    receipt_key: crate::signing::KeyPair,
    /// The keys mandates are verified with.
    mandate_keys: crate::signing::VerifyKeys,
    /// The provider connectors of "look it up at the provider".
    providers: crate::providers::Providers,
}

type Shared = State<Arc<Console>>;

/// Runs a `console` subcommand.
pub async fn run(ctx: &Context, args: ConsoleArgs) -> Result<(), CommandError> {
    match args.command {
        Some(ConsoleCommand::Operator(OperatorCommand::Add(op))) => {
            operator_add(&op.name, op.read_only)
        }
        None => {
            let mut ctx = ctx.clone();
            if let Some(url) = &args.providers_url {
                ctx.settings.point_providers_at(url);
            }
            serve(&ctx, args.listen).await
        }
    }
}

/// `console operator add NAME`: reads the password from stdin and prints the entry to put in
/// the configuration (only the argon2id hash, never the password).
fn operator_add(name: &str, read_only: bool) -> Result<(), CommandError> {
    if !crate::config::valid_operator_name(name) {
        return Err(CommandError::Usage(
            "an operator name is 1 to 64 of [A-Za-z0-9._-]".into(),
        ));
    }
    let mut password = String::new();
    std::io::stdin().read_line(&mut password).map_err(runtime)?;
    let password = password.trim_end_matches(['\r', '\n']);
    if password.chars().count() < 12 {
        return Err(CommandError::Usage(
            "the password (read from stdin) must be at least 12 characters".into(),
        ));
    }
    let hash = hash_password(password).map_err(runtime)?;
    println!(
        "# add to the console's configuration file ([console] section):\n[[console.operators]]\nname = \"{name}\"\npassword_hash = \"{hash}\"\nread_only = {read_only}"
    );
    Ok(())
}

async fn serve(ctx: &Context, listen: SocketAddr) -> Result<(), CommandError> {
    if ctx.settings.console.operators.is_empty() {
        return Err(CommandError::Usage(
            "no console operators are configured: add one with `refund-worker console operator add NAME` (password on stdin) and put the printed entry in the configuration file".into(),
        ));
    }
    let usage = |e: &dyn std::fmt::Display| CommandError::Usage(e.to_string());
    let sealer = Sealer::from_config(&ctx.settings.broker.seal_keys).map_err(|e| usage(&e))?;
    let receipt_key = crate::signing::KeyPair::from_seed(
        &ctx.settings.receipts.signing_key,
        "[receipts] signing_key",
    )
    .map_err(|e| usage(&e))?;
    let mandate_keys = crate::signing::VerifyKeys::from_hex_list(
        &ctx.settings.mandates.verify_keys,
        "[mandates] verify_keys",
    )
    .map_err(|e| usage(&e))?;
    let redis = store::connect(&ctx.connections.redis_url)
        .await
        .map_err(runtime)?;
    let client = crate::http::client(&ctx.settings.providers).map_err(runtime)?;
    let metrics = crate::metrics::Metrics::new();
    // The look-up reads; it honours no pause (an operator may look during an incident).
    let pauses = Arc::new(crate::providers::pause::PauseBoard::new(
        metrics.provider_paused.clone(),
    ));
    let providers =
        crate::providers::Providers::from_settings(&ctx.settings, &metrics, client, &pauses);
    let console = Arc::new(Console {
        ctx: ctx.clone(),
        auth: Auth::new(
            ctx.settings.console.operators.clone(),
            ctx.settings.console.session_ttl,
        ),
        sealer,
        redis,
        receipt_key,
        mandate_keys,
        providers,
    });
    let app = router(console);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CommandError::Runtime(format!("cannot listen on {listen}: {e}")))?;
    let local = listener.local_addr().map_err(runtime)?;
    // Tests and scripts read this line to find a port chosen by the system (:0).
    println!("console listening on http://{local}");
    let shutdown = super::shutdown_on_signal();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(runtime)
}

fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/", get(overview))
        .route("/dead-letters", get(dead_letters))
        .route("/dead-letters/{job_id}", get(letter))
        .route("/dead-letters/{job_id}/replay", post(replay_one))
        .route("/dead-letters/{job_id}/lookup", post(lookup))
        .route("/groups/replay", post(replay_group))
        .route("/dead-letters/remove", post(remove))
        .route("/providers/{name}/pause", post(pause))
        .route("/providers/{name}/resume", post(resume))
        .route("/audit", get(audit))
        .route("/mandates", get(mandates))
        .route("/receipts", get(receipts))
        .with_state(console)
}

/// Why a request gets no page.
enum Refusal {
    /// Not signed in (or the session expired): to the sign-in page.
    SignIn,
    /// Signed in, but this action is not theirs to take.
    Forbidden(&'static str),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::SignIn => Redirect::to("/login").into_response(),
            Refusal::Forbidden(why) => (StatusCode::FORBIDDEN, why).into_response(),
        }
    }
}

/// The session of a request.
fn signed_in(console: &Console, headers: &HeaderMap) -> Result<Session, Refusal> {
    cookie_token(headers.get(header::COOKIE).and_then(|v| v.to_str().ok()))
        .and_then(|token| console.auth.session(token))
        .ok_or(Refusal::SignIn)
}

/// The session of an action: signed in, not read-only, and carrying its CSRF token.
fn may_act(console: &Console, headers: &HeaderMap, csrf: &str) -> Result<Session, Refusal> {
    let session = signed_in(console, headers)?;
    if csrf != session.csrf {
        return Err(Refusal::Forbidden(
            "the form's CSRF token does not match your session; reload the page",
        ));
    }
    if session.read_only {
        return Err(Refusal::Forbidden("read-only operators may not act"));
    }
    Ok(session)
}

fn page_error(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Html(pages::error(&e.to_string()).into_string()),
    )
        .into_response()
}

async fn login_page() -> Html<String> {
    Html(pages::login(None).into_string())
}

#[derive(Deserialize)]
struct Credentials {
    name: String,
    password: String,
}

async fn login(State(console): Shared, Form(form): Form<Credentials>) -> Response {
    let checked = {
        let console = Arc::clone(&console);
        // argon2 is deliberately slow: keep it off the async workers.
        tokio::task::spawn_blocking(move || console.auth.sign_in(&form.name, &form.password))
            .await
            .ok()
            .flatten()
    };
    match checked {
        Some((token, _)) => {
            let mut response = Redirect::to("/").into_response();
            let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        None => (
            StatusCode::UNAUTHORIZED,
            Html(pages::login(Some("wrong name or password")).into_string()),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct CsrfOnly {
    csrf: String,
}

async fn logout(
    State(console): Shared,
    headers: HeaderMap,
    Form(_form): Form<CsrfOnly>,
) -> Response {
    if let Some(token) = cookie_token(headers.get(header::COOKIE).and_then(|v| v.to_str().ok())) {
        console.auth.sign_out(token);
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("rw_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    response
}

/// RabbitMQ for one request (the console is not a hot path).
async fn broker_session(console: &Console) -> Result<(lapin::Connection, Publisher), String> {
    let connection = broker::connect(&console.ctx.connections.amqp_url, "refund-worker console")
        .await
        .map_err(|e| e.to_string())?;
    let publisher = Publisher::open(&connection)
        .await
        .map_err(|e| e.to_string())?;
    Ok((connection, publisher))
}

/// Ready messages and consumers of `queue` (passive declare: nothing is created).
async fn depth(publisher: &Publisher, queue: &str) -> Option<(u32, u32)> {
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = publisher
        .channel()
        .queue_declare(queue.into(), passive, lapin::types::FieldTable::default())
        .await
        .ok()?;
    Some((declared.message_count(), declared.consumer_count()))
}

async fn read_letters(
    console: &Console,
    connection: &lapin::Connection,
) -> Result<DeadLetterQueue, String> {
    let topology = console.ctx.connections.topology(&console.ctx.settings);
    DeadLetterQueue::read(connection, &topology, READ_LIMIT, &console.sealer)
        .await
        .map_err(|e| e.to_string())
}

fn controls(console: &Console) -> Controls {
    Controls::new(console.redis.clone(), &console.ctx.connections.prefix)
}

fn audit_log(console: &Console) -> crate::store::AuditLog {
    crate::store::AuditLog::new(
        console.redis.clone(),
        &console.ctx.connections.prefix,
        console.receipt_key.clone(),
    )
}

async fn overview(State(console): Shared, headers: HeaderMap) -> Response {
    let session = match signed_in(&console, &headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let (connection, publisher) = match broker_session(&console).await {
        Ok(b) => b,
        Err(e) => return page_error(e),
    };
    let topology = console.ctx.connections.topology(&console.ctx.settings);
    let mut queues = Vec::new();
    for queue in topology
        .work_queues()
        .into_iter()
        .chain([topology.dead_queue()])
    {
        let (ready, consumers) = depth(&publisher, &queue).await.unwrap_or((0, 0));
        queues.push((queue, ready, consumers));
    }
    let letters = match read_letters(&console, &connection).await {
        Ok(q) => q,
        Err(e) => return page_error(e),
    };
    let all: Vec<_> = letters.letters.iter().collect();
    let groups = super::dlq::group(&all);
    let mut stuck = std::collections::BTreeMap::new();
    for letter in &letters.letters {
        if let Some((amount, currency)) = &letter.amount {
            *stuck.entry(currency.clone()).or_insert(0u64) += amount;
        }
    }
    let count = letters.letters.len();
    letters.close().await;
    let _ = connection.close(200, "console".into()).await;
    let paused = controls(&console).paused().await.unwrap_or_default();
    let stats = store::Stats::new(console.redis.clone(), &console.ctx.connections.prefix);
    let now = time::OffsetDateTime::now_utc();
    let minutes = stats.minutes(now, 10).await.unwrap_or_default();
    let today = stats.day(now).await.unwrap_or_default();
    // `None`: Redis could not say (shown as unknown, never as "no worker").
    let workers = stats.workers(100).await.ok();
    let audit_head = audit_log(&console).head().await.ok().flatten();
    Html(
        pages::overview(&pages::Overview {
            session: &session,
            prefix: &console.ctx.connections.prefix,
            queues: &queues,
            dead_letters: count,
            groups: &groups,
            stuck: &stuck,
            paused: &paused,
            minutes: &minutes,
            today: &today,
            workers: &workers,
            audit_head: audit_head.as_ref(),
        })
        .into_string(),
    )
    .into_response()
}

#[derive(Deserialize)]
struct Search {
    #[serde(default)]
    q: String,
}

async fn dead_letters(
    State(console): Shared,
    headers: HeaderMap,
    Query(search): Query<Search>,
) -> Response {
    let session = match signed_in(&console, &headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let (connection, _publisher) = match broker_session(&console).await {
        Ok(b) => b,
        Err(e) => return page_error(e),
    };
    let letters = match read_letters(&console, &connection).await {
        Ok(q) => q,
        Err(e) => return page_error(e),
    };
    let q = search.q.trim().to_lowercase();
    let matching: Vec<_> = letters
        .letters
        .iter()
        .filter(|l| {
            q.is_empty()
                || l.job_id.to_lowercase().contains(&q)
                || l.payment_id
                    .as_deref()
                    .is_some_and(|p| p.to_lowercase().contains(&q))
                || l.error.to_lowercase().contains(&q)
                || String::from_utf8_lossy(&l.body).to_lowercase().contains(&q)
        })
        .collect();
    let groups = super::dlq::group(&matching);
    let body = pages::dead_letters(&session, &search.q, &groups, &matching).into_string();
    letters.close().await;
    let _ = connection.close(200, "console".into()).await;
    Html(body).into_response()
}

async fn letter(
    State(console): Shared,
    headers: HeaderMap,
    Path(job_id): Path<String>,
) -> Response {
    let session = match signed_in(&console, &headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    letter_page(&console, &session, &job_id, None).await
}

/// A letter's page: the letter, and where its job stands (its key, idempotency record and
/// receipt); `lookup`, the provider's answer when the operator asked for it.
async fn letter_page(
    console: &Console,
    session: &Session,
    job_id: &str,
    lookup: Option<String>,
) -> Response {
    let world = match replay_world(console).await {
        Ok(w) => w,
        Err(e) => return page_error(e),
    };
    let found = match super::dlq::by_job_id(&world.letters.letters, job_id) {
        Ok(found) => found,
        Err(why) => {
            // Several different letters carry this id: show the first, and say so.
            let first: Vec<_> = world
                .letters
                .letters
                .iter()
                .filter(|l| l.job_id == job_id)
                .take(1)
                .collect();
            if first.is_empty() {
                world.close().await;
                return page_error(why);
            }
            let facts = pages::LetterFacts {
                warning: Some(why),
                ..Default::default()
            };
            let page = pages::letter(session, first[0], &facts);
            world.close().await;
            return Html(page.into_string()).into_response();
        }
    };
    let Some(letter) = found.first().copied() else {
        world.close().await;
        return (
            StatusCode::NOT_FOUND,
            Html(pages::error(&format!("no dead letter with job id {job_id}")).into_string()),
        )
            .into_response();
    };
    let mut facts = pages::LetterFacts {
        lookup,
        ..Default::default()
    };
    if let Ok(job) = crate::job::RefundJob::parse(&letter.body) {
        let replay = world.replay(console, true);
        if let Ok(Some(key)) = replay.key_of(letter, &job).await {
            facts.record = world.store.get(&key).await.ok().flatten();
            facts.receipt = receipt_chain(console)
                .by_key(key.as_str())
                .await
                .ok()
                .flatten();
            facts.key = Some(key.to_string());
        }
    }
    let page = pages::letter(session, letter, &facts);
    world.close().await;
    Html(page.into_string()).into_response()
}

/// "Look it up at the provider": asks the letter's provider, read-only, whether a refund
/// exists under the letter's key (by the refund id its record holds, else as a worker
/// reconciling would), and shows the answer on the letter's page. Not recorded: it changes
/// nothing.
async fn lookup(
    State(console): Shared,
    headers: HeaderMap,
    Path(job_id): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    let session = match signed_in(&console, &headers) {
        Ok(s) if s.csrf == form.csrf => s,
        Ok(_) => {
            return Refusal::Forbidden("the form's CSRF token does not match your session")
                .into_response();
        }
        Err(r) => return r.into_response(),
    };
    let answer = match ask_provider(&console, &job_id).await {
        Ok(text) | Err(text) => text,
    };
    letter_page(&console, &session, &job_id, Some(answer)).await
}

/// The provider's answer about the letter `job_id`'s refund, in words.
async fn ask_provider(console: &Console, job_id: &str) -> Result<String, String> {
    let world = replay_world(console).await?;
    let answer = async {
        let letter = *super::dlq::by_job_id(&world.letters.letters, job_id)?
            .first()
            .ok_or_else(|| format!("no dead letter with job id {job_id}"))?;
        let job = crate::job::RefundJob::parse(&letter.body)
            .map_err(|e| format!("the letter is not a valid job ({e}): nothing to look up"))?;
        let (Some(provider), Some(payment_id)) = (job.provider, job.payment_id.clone()) else {
            return Err("a governed job names its order, not a payment: look it up by order with `refund-worker status --order`".into());
        };
        let key = world
            .replay(console, true)
            .key_of(letter, &job)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no worker has keyed this job yet: nothing can have been sent")?;
        let record = world.store.get(&key).await.map_err(|e| e.to_string())?;
        // A key held by a different request: what the provider holds under it is that
        // request's refund, not this letter's.
        let ours = crate::pipeline::Fingerprint::of(&job);
        if let Some(theirs) = record.as_ref().and_then(|r| r.fingerprint.as_deref())
            && !ours.matches(theirs)
        {
            return Ok(format!(
                "key {key} belongs to a different request ({theirs}), not to this letter ({ours}): whatever {provider} holds under it is that request's refund; this letter's was never sent under it"
            ));
        }
        let connector = console
            .providers
            .get(provider)
            .ok_or_else(|| format!("no connector for {provider}"))?;
        let request = crate::providers::RefundRequest {
            key: key.clone(),
            payment_id,
            amount: job.amount,
            currency: job.currency,
            reason: job.reason,
            description: job.description.clone(),
            job_id: letter.job_id.clone(),
        };
        let refund_id = record
            .as_ref()
            .and_then(|r| r.result.as_ref())
            .map(|r| r.refund.refund_id.clone());
        let snapshot = record.as_ref().and_then(|r| r.snapshot.as_deref());
        if refund_id.is_none() && connector.needs_snapshot() && snapshot.is_none() {
            return Ok(format!(
                "{provider} cannot be asked by our key, and no snapshot of the payment was recorded for {key}: the provider was not asked. Do not refund by hand: a replay reconciles with {provider} before it sends"
            ));
        }
        let found = match &refund_id {
            Some(id) => connector.status(&request, id).await.map(Some),
            None => connector.find(&request, snapshot).await,
        };
        let at = rfc3339(time::OffsetDateTime::now_utc());
        Ok(match found {
            Ok(Some(refund)) => format!(
                "{provider} at {at}: refund {} under key {key}, {:?}, {} (minor units)",
                refund.refund_id, refund.status, refund.amount
            ),
            Ok(None) => format!(
                "{provider} at {at}: no refund under key {key} so far. Do not refund by hand: a replay asks {provider} again before it sends"
            ),
            Err(e) => format!("{provider} at {at}: could not tell ({e}); try again later"),
        })
    }
    .await;
    world.close().await;
    answer
}

fn receipt_chain(console: &Console) -> crate::store::ReceiptChain {
    crate::store::ReceiptChain::new(
        console.redis.clone(),
        &console.ctx.connections.prefix,
        console.receipt_key.clone(),
    )
}

#[derive(Deserialize)]
struct ProviderForm {
    csrf: String,
    /// Why (pauses only).
    #[serde(default)]
    reason: Option<String>,
}

async fn pause(
    State(console): Shared,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<ProviderForm>,
) -> Response {
    let reason = form.reason.clone().unwrap_or_default();
    provider_control(&console, &headers, &name, &form.csrf, Some(&reason)).await
}

async fn resume(
    State(console): Shared,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<ProviderForm>,
) -> Response {
    provider_control(&console, &headers, &name, &form.csrf, None).await
}

/// Pauses (with `reason`) or resumes provider `name` as the signed-in operator, through the
/// CLI's own functions (one validation, one audit record), then back to the overview.
async fn provider_control(
    console: &Console,
    headers: &HeaderMap,
    name: &str,
    csrf: &str,
    pause_for: Option<&str>,
) -> Response {
    let session = match may_act(console, headers, csrf) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let Ok(provider) = ProviderName::parse(name) else {
        return (StatusCode::NOT_FOUND, "no such provider").into_response();
    };
    let controls = controls(console);
    let operator = super::Operator::of_console(&session.operator);
    let done = match pause_for {
        Some(reason) => {
            super::provider::pause(&console.ctx, &operator, &controls, provider, reason).await
        }
        None => super::provider::resume(&console.ctx, &operator, &controls, provider).await,
    };
    match done {
        Ok(_) => Redirect::to("/").into_response(),
        Err(CommandError::Usage(why)) => (StatusCode::BAD_REQUEST, why).into_response(),
        Err(e) => page_error(e),
    }
}

async fn audit(State(console): Shared, headers: HeaderMap) -> Response {
    let session = match signed_in(&console, &headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let log = audit_log(&console);
    let entries = match log.list(200).await {
        Ok(e) => e,
        Err(e) => return page_error(e),
    };
    let report = match log.verify().await {
        Ok(r) => r,
        Err(e) => return page_error(e),
    };
    Html(pages::audit(&session, &entries, &report).into_string()).into_response()
}

/// How long a canary's outcome is awaited before the rest of its group is left alone.
const CANARY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Deserialize)]
struct ReplayForm {
    csrf: String,
    /// Present once the operator confirmed the preview.
    #[serde(default)]
    confirm: Option<String>,
    /// Group replays: the group.
    #[serde(default)]
    class: String,
    #[serde(default)]
    cause: String,
    /// Group replays: one letter first.
    #[serde(default)]
    canary: Option<String>,
    /// Edit & retry: the letter's new body (validated before anything is sent).
    #[serde(default)]
    body: String,
    /// On confirmation: the identities of the letters the preview showed.
    #[serde(default)]
    letters: String,
}

/// What a replay request needs from RabbitMQ and Redis, opened for it.
struct ReplayWorld {
    connection: lapin::Connection,
    publisher: Publisher,
    letters: DeadLetterQueue,
    store: crate::store::IdempotencyStore,
}

/// An action's session (see [`may_act`]) and the queue and store it works on.
async fn acting(
    console: &Console,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<(Session, ReplayWorld), Response> {
    let session = may_act(console, headers, csrf).map_err(IntoResponse::into_response)?;
    let world = replay_world(console).await.map_err(page_error)?;
    Ok((session, world))
}

async fn replay_world(console: &Console) -> Result<ReplayWorld, String> {
    let (connection, publisher) = broker_session(console).await?;
    let letters = read_letters(console, &connection).await?;
    let store = crate::store::IdempotencyStore::from_settings(
        console.redis.clone(),
        &console.ctx.connections.prefix,
        &console.ctx.settings.idempotency,
    );
    Ok(ReplayWorld {
        connection,
        publisher,
        letters,
        store,
    })
}

impl ReplayWorld {
    fn replay<'a>(&'a self, console: &'a Console, dry_run: bool) -> super::dlq::Replay<'a> {
        super::dlq::Replay {
            publisher: &self.publisher,
            exchange: console
                .ctx
                .connections
                .topology(&console.ctx.settings)
                .jobs_exchange(),
            store: &self.store,
            edits: &[],
            body: None,
            dry_run,
            sealer: &console.sealer,
        }
    }

    async fn close(self) {
        // The money-stuck tally follows the queue (best effort: the queue is the truth).
        let removed = self.letters.removed();
        if !removed.is_empty()
            && let Err(e) = self.store.forget_dead_letters(&removed).await
        {
            tracing::warn!(error = %e, "could not update the dead-letter money tally");
        }
        self.letters.close().await;
        let _ = self.connection.close(200, "console".into()).await;
    }
}

fn preview_text(report: &super::dlq::ReplayReport) -> String {
    let mut text: Vec<String> = report
        .lines
        .iter()
        .map(|(tag, id, why)| format!("{tag} {id} {why}"))
        .collect();
    text.push(report.summary.clone());
    text.join("\n")
}

async fn replay_one(
    State(console): Shared,
    headers: HeaderMap,
    Path(job_id): Path<String>,
    Form(form): Form<ReplayForm>,
) -> Response {
    let (session, world) = match acting(&console, &headers, &form.csrf).await {
        Ok(both) => both,
        Err(refused) => return refused,
    };
    let confirmed = form.confirm.as_deref() == Some("yes");
    let previewed = confirmed.then_some(form.letters.as_str());
    let chosen = match select_letters(&world.letters.letters, &job_id, ("", ""), previewed) {
        Ok(chosen) => chosen,
        Err(why) => {
            world.close().await;
            return (
                StatusCode::NOT_FOUND,
                Html(pages::error(&why).into_string()),
            )
                .into_response();
        }
    };
    let letters = identities(&chosen);
    // Edit & retry: the new body must be a valid job, and may touch the idempotency key only
    // on a letter that is invalid (it never reached a provider).
    let new_body = (!form.body.trim().is_empty()).then(|| form.body.as_bytes().to_vec());
    if let Some(body) = &new_body {
        let refused = match crate::job::RefundJob::parse(body) {
            Err(e) => Some(format!("the edited body is not a valid job: {e}")),
            Ok(_) => {
                let fields = super::dlq::changed_fields(&chosen[0].body, body);
                let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
                let replay = world.replay(&console, true);
                replay
                    .check_edit(&chosen, &fields)
                    .await
                    .err()
                    .map(|e| e.to_string())
            }
        };
        if let Some(why) = refused {
            world.close().await;
            return (
                StatusCode::BAD_REQUEST,
                Html(pages::error(&why).into_string()),
            )
                .into_response();
        }
    }
    // What the operator confirmed, as the server sees it right before doing it.
    let shown = if confirmed {
        let mut dry = world.replay(&console, true);
        dry.body = new_body.as_deref();
        dry.run(&chosen).await.ok().map(|r| preview_text(&r))
    } else {
        None
    };
    let mut replay = world.replay(&console, !confirmed);
    replay.body = new_body.as_deref();
    let report = replay.run(&chosen).await;
    let hidden = [("body", form.body.as_str()), ("letters", letters.as_str())];
    let page = match (&report, confirmed) {
        (Err(e), _) => pages::error(&e.to_string()),
        (Ok(report), false) => pages::replay_preview(
            &session,
            &format!("/dead-letters/{job_id}/replay"),
            report,
            &hidden,
        ),
        (Ok(report), true) => pages::replay_done(&session, report, None),
    };
    if confirmed {
        let result = match &report {
            Ok(r) => r.counts.clone(),
            Err(e) => json!({ "failed": e.to_string() }),
        };
        let mut target = json!({ "job_ids": [job_id] });
        if new_body.is_some() {
            target["body"] = json!(form.body);
        }
        if let Err(e) = record(
            &console,
            &session,
            "dlq replay",
            target,
            shown.as_deref(),
            result,
        )
        .await
        {
            world.close().await;
            return page_error(e);
        }
    }
    world.close().await;
    Html(page.into_string()).into_response()
}

async fn replay_group(
    State(console): Shared,
    headers: HeaderMap,
    Form(form): Form<ReplayForm>,
) -> Response {
    let (session, world) = match acting(&console, &headers, &form.csrf).await {
        Ok(both) => both,
        Err(refused) => return refused,
    };
    let confirmed = form.confirm.as_deref() == Some("yes");
    let previewed = confirmed.then_some(form.letters.as_str());
    let group = (form.class.as_str(), form.cause.as_str());
    let chosen = match select_letters(&world.letters.letters, "", group, previewed) {
        Ok(chosen) => chosen,
        Err(why) => {
            world.close().await;
            return page_error(why);
        }
    };
    let canary = form.canary.is_some();
    let letters = identities(&chosen);
    let hidden = [
        ("class", form.class.as_str()),
        ("cause", form.cause.as_str()),
        ("canary", if canary { "on" } else { "" }),
        ("letters", letters.as_str()),
    ];
    if !confirmed {
        let page = match world.replay(&console, true).run(&chosen).await {
            Ok(report) => pages::replay_preview(&session, "/groups/replay", &report, &hidden),
            Err(e) => pages::error(&e.to_string()),
        };
        world.close().await;
        return Html(page.into_string()).into_response();
    }
    let shown = world
        .replay(&console, true)
        .run(&chosen)
        .await
        .ok()
        .map(|r| preview_text(&r));
    let (report, canary_said) = if canary {
        let (report, said) = world
            .replay(&console, false)
            .canary(&chosen, CANARY_WAIT)
            .await;
        (report, Some(said))
    } else {
        (world.replay(&console, false).run(&chosen).await, None)
    };
    let result = match &report {
        Ok(r) => json!({ "counts": r.counts, "canary": canary_said }),
        Err(e) => json!({ "failed": e.to_string(), "canary": canary_said }),
    };
    let target = json!({
        "class": form.class,
        "cause": form.cause,
        "canary": canary,
        "job_ids": chosen.iter().map(|l| l.job_id.as_str()).collect::<Vec<_>>(),
    });
    let action = if canary {
        "dlq replay group (canary)"
    } else {
        "dlq replay group"
    };
    let recorded = record(&console, &session, action, target, shown.as_deref(), result).await;
    let page = match (&report, recorded) {
        (_, Err(e)) => pages::error(&e),
        (Err(e), _) => pages::error(&e.to_string()),
        (Ok(report), Ok(())) => pages::replay_done(&session, report, canary_said.as_deref()),
    };
    world.close().await;
    Html(page.into_string()).into_response()
}

#[derive(Deserialize)]
struct RemoveForm {
    csrf: String,
    /// `purge` or `archive`.
    action: String,
    /// Present once the operator confirmed the preview.
    #[serde(default)]
    confirm: Option<String>,
    /// One letter…
    #[serde(default)]
    job_id: String,
    /// …or a group.
    #[serde(default)]
    class: String,
    #[serde(default)]
    cause: String,
    /// On confirmation: the identities of the letters the preview showed.
    #[serde(default)]
    letters: String,
}

/// Purge (delete for good) or archive (to a new file `dlq import` reads) one letter or a
/// group: previewed first, then done and recorded with the preview the server saw.
async fn remove(
    State(console): Shared,
    headers: HeaderMap,
    Form(form): Form<RemoveForm>,
) -> Response {
    let session = match may_act(&console, &headers, &form.csrf) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let archive = match form.action.as_str() {
        "archive" => true,
        "purge" => false,
        _ => return (StatusCode::BAD_REQUEST, "action is purge or archive").into_response(),
    };
    let world = match replay_world(&console).await {
        Ok(w) => w,
        Err(e) => return page_error(e),
    };
    let confirmed = form.confirm.as_deref() == Some("yes");
    let previewed = confirmed.then_some(form.letters.as_str());
    let group = (form.class.as_str(), form.cause.as_str());
    let chosen = match select_letters(&world.letters.letters, &form.job_id, group, previewed) {
        Ok(chosen) => chosen,
        Err(why) => {
            world.close().await;
            return page_error(why);
        }
    };
    let letters = identities(&chosen);
    let groups = super::dlq::group(&chosen);
    let mut money = std::collections::BTreeMap::new();
    for g in &groups {
        for (currency, minor) in &g.amount {
            *money.entry(currency.clone()).or_insert(0u64) += minor;
        }
    }
    let file = (archive && confirmed).then(|| archive_file(&console, &session.operator));
    let preview = if archive {
        format!(
            "would archive {} dead letter(s) ({}) to a new file in {}; `refund-worker dlq import FILE` brings them back",
            chosen.len(),
            super::dlq::money(&money),
            console.ctx.settings.console.archive_dir.display()
        )
    } else {
        format!(
            "would purge {} dead letter(s) ({}) for good: nothing brings them back",
            chosen.len(),
            super::dlq::money(&money)
        )
    };
    let hidden = [
        ("action", form.action.as_str()),
        ("job_id", form.job_id.as_str()),
        ("class", form.class.as_str()),
        ("cause", form.cause.as_str()),
        ("letters", letters.as_str()),
    ];
    if !confirmed {
        let page = pages::remove_preview(&session, &preview, &chosen, &hidden, archive);
        world.close().await;
        return Html(page.into_string()).into_response();
    }
    let done = match &file {
        Some(file) => {
            let made = match file.parent() {
                Some(dir) => std::fs::create_dir_all(dir).map_err(runtime),
                None => Ok(()),
            };
            match made {
                Ok(()) => super::dlq::archive(&chosen, file).await,
                Err(e) => Err(e),
            }
        }
        None => super::dlq::purge(&chosen).await,
    };
    let verb = if archive { "archived" } else { "purged" };
    let result = match &done {
        Ok(()) => {
            let mut r = json!({ verb: chosen.len() });
            if let Some(file) = &file {
                r["file"] = json!(file.display().to_string());
            }
            r
        }
        Err(e) => {
            let mut r = json!({ "failed": e.to_string(), "removed": world.letters.removed() });
            if let Some(file) = &file {
                r["file"] = json!(file.display().to_string());
            }
            r
        }
    };
    let target = json!({
        "job_ids": chosen.iter().map(|l| l.job_id.as_str()).collect::<Vec<_>>(),
        "class": form.class,
        "cause": form.cause,
    });
    let action = if archive { "dlq archive" } else { "dlq purge" };
    let recorded = record(&console, &session, action, target, Some(&preview), result).await;
    let page = match (done, recorded) {
        (Err(e), _) => pages::error(&e.to_string()),
        (_, Err(e)) => pages::error(&e),
        (Ok(()), Ok(())) => {
            let said = match &file {
                Some(file) => format!(
                    "{verb} {} dead letter(s) to {}; `refund-worker dlq import {}` brings them back",
                    chosen.len(),
                    file.display(),
                    file.display()
                ),
                None => format!("{verb} {} dead letter(s)", chosen.len()),
            };
            pages::removed(&session, &said)
        }
    };
    world.close().await;
    Html(page.into_string()).into_response()
}

/// A new archive file's path: the configured directory, the time and the operator.
fn archive_file(console: &Console, operator: &str) -> std::path::PathBuf {
    let now = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    );
    console
        .ctx
        .settings
        .console
        .archive_dir
        .join(format!("dlq-archive-{stamp}-{operator}.jsonl"))
}

/// The letters an action names: those of one job id (refused when different letters carry
/// it: one may be planted) or of one group. On confirmation, only the letters the preview
/// showed (their identities travel in the form): a letter that arrived since is never taken
/// along unseen.
fn select_letters<'a>(
    letters: &'a [crate::broker::dead_letters::DeadLetter],
    job_id: &str,
    group: (&str, &str),
    previewed: Option<&str>,
) -> Result<Vec<&'a crate::broker::dead_letters::DeadLetter>, String> {
    let mut chosen = if job_id.is_empty() {
        letters
            .iter()
            .filter(|l| {
                super::dlq::class_of(l) == group.0 && super::dlq::cause(&l.error) == group.1
            })
            .collect()
    } else {
        super::dlq::by_job_id(letters, job_id)?
    };
    if let Some(previewed) = previewed {
        let shown: std::collections::BTreeSet<&str> = previewed.split(',').collect();
        chosen.retain(|l| shown.contains(super::dlq::identity(l).as_str()));
    }
    if chosen.is_empty() {
        return Err(match previewed {
            Some(_) => "none of the letters previewed is in the queue any more".into(),
            None if job_id.is_empty() => "no dead letter is left in that group".into(),
            None => format!("no dead letter with job id {job_id}"),
        });
    }
    Ok(chosen)
}

/// The identities of `letters`, for the confirmation form.
fn identities(letters: &[&crate::broker::dead_letters::DeadLetter]) -> String {
    let ids: std::collections::BTreeSet<String> =
        letters.iter().map(|l| super::dlq::identity(l)).collect();
    ids.into_iter().collect::<Vec<_>>().join(",")
}

/// Records an action of the signed-in operator; `preview` is the dry run the server itself
/// ran just before carrying it out (never text the browser sends back).
async fn record(
    console: &Console,
    session: &Session,
    action: &str,
    target: Value,
    preview: Option<&str>,
    result: Value,
) -> Result<(), String> {
    let operator = super::Operator::of_console(&session.operator);
    let preview = preview.map_or(Value::Null, |p| Value::String(p.to_owned()));
    super::audit::record_as(&console.ctx, &operator, action, target, preview, result)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn mandates(State(console): Shared, headers: HeaderMap) -> Response {
    let session = match signed_in(&console, &headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let keys = &console.mandate_keys;
    let store =
        crate::store::MandateStore::new(console.redis.clone(), &console.ctx.connections.prefix);
    let stored = match store.list().await {
        Ok(l) => l,
        Err(e) => return page_error(e),
    };
    let now = time::OffsetDateTime::now_utc();
    let today = crate::job::JobDate::of(now);
    let mut rows = Vec::with_capacity(stored.len());
    for s in stored {
        let spent = store.spent(s.mandate.id.as_str(), today).await.unwrap_or(0);
        let valid = s.mandate.verify(keys);
        let state = s.mandate.state(now);
        rows.push(pages::MandateRow {
            mandate: s.mandate,
            spent,
            valid,
            state: state.as_str(),
        });
    }
    Html(pages::mandates(&session, &today.to_string(), &rows).into_string()).into_response()
}

async fn receipts(State(console): Shared, headers: HeaderMap) -> Response {
    let session = match signed_in(&console, &headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let chain = receipt_chain(&console);
    let head = chain.head().await.ok().flatten();
    let report = match chain.verify().await {
        Ok(r) => r,
        Err(e) => return page_error(e),
    };
    let at = rfc3339(time::OffsetDateTime::now_utc());
    Html(
        pages::receipts(
            &session,
            head.as_ref(),
            &report,
            &at,
            &chain.public_key().to_hex(),
        )
        .into_string(),
    )
    .into_response()
}
