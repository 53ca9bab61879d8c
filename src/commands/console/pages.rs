//! The console's pages: plain HTML forms and tables, no JavaScript, readable on a laptop.

use std::collections::BTreeMap;

use maud::{DOCTYPE, Markup, html};

use super::auth::Session;
use crate::{
    broker::dead_letters::DeadLetter,
    commands::dlq::{Group, money},
    governance::audit::{AuditReport, Entry},
    job::ProviderName,
    store::{Pause, Tally},
};

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 1rem;color:#1b1b1b}\
nav{display:flex;gap:1rem;align-items:center;border-bottom:1px solid #ccc;padding:.5rem 0}\
nav .who{margin-left:auto;color:#555}table{border-collapse:collapse;width:100%;margin:.5rem 0}\
th,td{border-bottom:1px solid #e3e3e3;padding:.3rem .5rem;text-align:left;vertical-align:top;font-size:.92rem}\
th{background:#f5f5f5}pre{background:#f5f5f5;padding:.5rem;overflow:auto}.warn{color:#a40000}\
.ok{color:#0a6b2a}form.inline{display:inline}div.group,div.actions{margin:.4rem 0}input[type=text]{min-width:16rem}";

fn layout(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · refund-worker console" }
                style { (STYLE) }
            }
            body {
                @if let Some(session) = session {
                    nav {
                        strong { "refund-worker" }
                        a href="/" { "Overview" }
                        a href="/dead-letters" { "Dead letters" }
                        a href="/mandates" { "Mandates" }
                        a href="/receipts" { "Receipts" }
                        a href="/audit" { "Audit log" }
                        span.who {
                            (session.operator)
                            @if session.read_only { " (read-only)" }
                        }
                        form.inline method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                h1 { (title) }
                (body)
            }
        }
    }
}

/// The sign-in page, the only page without a session.
pub(super) fn login(problem: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            @if let Some(problem) = problem { p.warn { (problem) } }
            form method="post" action="/login" {
                p { label { "Name " input type="text" name="name" autocomplete="username" required; } }
                p { label { "Password " input type="password" name="password" autocomplete="current-password" required; } }
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// A page that could not be built.
pub(super) fn error(what: &str) -> Markup {
    layout(
        "Not available",
        None,
        html! { p.warn { (what) } p { a href="/" { "Back to the overview" } } },
    )
}

/// What the overview shows.
pub(super) struct Overview<'a> {
    pub(super) session: &'a Session,
    pub(super) prefix: &'a str,
    /// (queue, ready messages, consumers).
    pub(super) queues: &'a [(String, u32, u32)],
    pub(super) dead_letters: usize,
    pub(super) groups: &'a [Group],
    /// Minor units stuck in dead letters, per currency.
    pub(super) stuck: &'a BTreeMap<String, u64>,
    pub(super) paused: &'a BTreeMap<String, Pause>,
    /// The last minutes' outcomes over every worker, oldest first.
    pub(super) minutes: &'a [(String, Tally)],
    /// Today's (UTC).
    pub(super) today: &'a Tally,
    /// The workers that sent a heartbeat lately (up to 100) and how many there are; `None`
    /// when Redis could not say.
    pub(super) workers: &'a Option<(Vec<crate::store::Heartbeat>, usize)>,
    pub(super) audit_head: Option<&'a (u64, String)>,
}

/// The overview.
pub(super) fn overview(o: &Overview<'_>) -> Markup {
    layout(
        "Overview",
        Some(o.session),
        html! {
            p { "Prefix " code { (o.prefix) } }
            h2 { "Queues" }
            table {
                tr { th { "queue" } th { "ready" } th { "consumers (workers)" } }
                @for (queue, ready, consumers) in o.queues {
                    tr { td { code { (queue) } } td { (ready) } td { (consumers) } }
                }
            }
            h2 { "Workers" }
            @match o.workers {
                None => p.warn { "Unknown: Redis did not answer the heartbeat read." },
                Some((workers, _)) if workers.is_empty() => {
                    p.warn { "No worker has sent a heartbeat in the last " (crate::store::stats::HEARTBEAT_TTL_SECS) " s: jobs wait in the queue until one runs." }
                }
                Some((workers, total)) => {
                    table {
                        tr { th { "worker" } th { "ready" } th { "circuits open" } th { "last heartbeat" } }
                        @for w in workers {
                            tr {
                                td { (w.name) }
                                @match &w.not_ready {
                                    None => td.ok { "ready" },
                                    Some(why) => td.warn { "not ready: " (why) },
                                }
                                td { @if w.circuits_open.is_empty() { "none" } @else { span.warn { (w.circuits_open.join(", ")) } } }
                                td { (w.at) }
                            }
                        }
                    }
                    @if *total > workers.len() { p { "… and " (total - workers.len()) " more" } }
                }
            }
            h2 { "Throughput" }
            p {
                "Today (UTC), over every worker: " strong { (o.today.succeeded) } " refunded ("
                strong { (money(&o.today.refunded)) } "), " strong { (o.today.failed) } " dead-lettered, "
                strong { (o.today.retried) } " retried."
            }
            table.minutes {
                tr { th { "minute (UTC)" } th { "succeeded" } th { "failed" } th { "retried" } th { "refunded" } }
                @for (minute, t) in o.minutes.iter().rev() {
                    tr {
                        td { (minute) } td { (t.succeeded) }
                        td { @if t.failed > 0 { span.warn { (t.failed) } } @else { "0" } }
                        td { (t.retried) } td { (money(&t.refunded)) }
                    }
                }
            }
            p.note { "Workers add their counts every few seconds; the receipts are the books." }
            h2 { "Dead letters" }
            p {
                strong { (o.dead_letters) } " dead letters; money stuck: "
                strong { (money(o.stuck)) }
                " · " a href="/dead-letters" { "open the dead letters" }
            }
            (group_table(o.groups))
            h2 { "Providers" }
            table {
                tr { th { "provider" } th { "circuit" } th { "state" } th { "action" } }
                @for provider in ProviderName::ALL {
                    @let name = provider.as_str();
                    tr {
                        td { (name) }
                        @match o.workers {
                            None => td.warn { "unknown" },
                            Some((workers, _)) => {
                                @let open = workers.iter().filter(|w| w.circuits_open.iter().any(|c| c == name)).count();
                                @if open > 0 {
                                    td.warn { "open in " (open) " of " (workers.len()) " worker(s)" }
                                } @else {
                                    td.ok { "closed" }
                                }
                            }
                        }
                        @match o.paused.get(name) {
                            Some(pause) => {
                                td.warn { "paused " (pause.to_string()) }
                                td {
                                    @if !o.session.read_only {
                                        form.inline method="post" action={ "/providers/" (name) "/resume" } {
                                            input type="hidden" name="csrf" value=(o.session.csrf);
                                            button type="submit" { "Resume" }
                                        }
                                    }
                                }
                            }
                            None => {
                                td.ok { "refunding" }
                                td {
                                    @if !o.session.read_only {
                                        form.inline method="post" action={ "/providers/" (name) "/pause" } {
                                            input type="hidden" name="csrf" value=(o.session.csrf);
                                            input type="text" name="reason" placeholder="why (incident id)" required;
                                            button type="submit" { "Pause" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Audit log" }
            p {
                @match o.audit_head {
                    Some((seq, hash)) => { (seq) " entries, head " code { (&hash[..hash.len().min(16)]) } }
                    None => "no entries yet",
                }
                " · " a href="/audit" { "open the audit log" }
            }
        },
    )
}

fn group_table(groups: &[Group]) -> Markup {
    html! {
        table {
            tr { th { "class" } th { "cause" } th { "count" } th { "providers" } th { "money" } th { "oldest" } th { "letters" } }
            @for g in groups {
                tr {
                    td { code { (g.handle) } } td { (g.class) } td { (g.cause) } td { (g.count) }
                    td { (g.providers.iter().cloned().collect::<Vec<_>>().join(", ")) }
                    td { (money(&g.amount)) }
                    td { (g.oldest.as_deref().unwrap_or("-")) }
                    td {
                        @for id in g.job_ids.iter().take(5) {
                            a href={ "/dead-letters/" (id) } { (id) } " "
                        }
                        @if g.job_ids.len() > 5 { "…" }
                    }
                }
            }
        }
    }
}

/// The dead letters, grouped, with a search.
pub(super) fn dead_letters(
    session: &Session,
    q: &str,
    groups: &[Group],
    letters: &[&DeadLetter],
) -> Markup {
    layout(
        "Dead letters",
        Some(session),
        html! {
            form method="get" action="/dead-letters" {
                input type="text" name="q" value=(q) placeholder="payment id, order id, job id or text";
                button type="submit" { "Search" }
            }
            h2 { "Groups" }
            (group_table(groups))
            @if !session.read_only {
                h3 { "Replay a group" }
                @for g in groups {
                    div.group {
                        code { (g.handle) } " " (g.class) " — " (g.cause) " (" (g.count) "): "
                        form.inline method="post" action="/groups/replay" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            input type="hidden" name="class" value=(g.class);
                            input type="hidden" name="cause" value=(g.cause);
                            label { input type="checkbox" name="canary" checked; " canary first" }
                            " "
                            button type="submit" { "Preview the replay" }
                        }
                        " "
                        (remove_buttons(session, &[("class", &g.class), ("cause", &g.cause)]))
                    }
                }
            }
            h2 { (letters.len()) " letters" }
            (letter_table(letters))
        },
    )
}

fn letter_table(letters: &[&DeadLetter]) -> Markup {
    html! {
        table {
            tr { th { "job id" } th { "class" } th { "provider" } th { "payment" } th { "amount" } th { "last seen" } th { "reason" } }
            @for l in letters {
                tr {
                    td { a href={ "/dead-letters/" (l.job_id) } { (l.job_id) } }
                    td { (l.class.map_or("unknown", |c| c.as_str())) }
                    td { (l.provider.as_deref().unwrap_or("-")) }
                    td { (l.payment_id.as_deref().unwrap_or("-")) }
                    td { @if let Some((amount, currency)) = &l.amount { (money_of(*amount, currency)) } }
                    td { (l.last_seen.as_deref().unwrap_or("-")) }
                    td { (l.error) }
                }
            }
        }
    }
}

fn money_of(minor: u64, currency: &str) -> String {
    money(&BTreeMap::from([(currency.to_owned(), minor)]))
}

/// The archive and purge buttons for one letter or a group (`which`: its hidden fields); each
/// leads to a preview first.
fn remove_buttons(session: &Session, which: &[(&str, &str)]) -> Markup {
    html! {
        @for (action, label) in [("archive", "Preview an archive"), ("purge", "Preview a purge")] {
            form.inline method="post" action="/dead-letters/remove" {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="action" value=(action);
                @for (name, value) in which { input type="hidden" name=(name) value=(value); }
                button type="submit" { (label) }
            }
            " "
        }
    }
}

/// One letter: reason, headers (sealed or not), body.
pub(super) fn letter(session: &Session, l: &DeadLetter, facts: &LetterFacts) -> Markup {
    let body = serde_json::from_slice::<serde_json::Value>(&l.body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| String::from_utf8_lossy(&l.body).into_owned());
    let header = |name: &str| l.headers.get(name).map_or("-", String::as_str).to_owned();
    layout(
        &format!("Dead letter {}", l.job_id),
        Some(session),
        html! {
            @if let Some(warning) = &facts.warning { p.warn { (warning) } }
            table {
                tr { th { "class" } td { (l.class.map_or("unknown", |c| c.as_str())) } }
                tr { th { "reason" } td { (l.error) } }
                tr { th { "provider" } td { (l.provider.as_deref().unwrap_or("-")) } }
                tr { th { "payment" } td { (l.payment_id.as_deref().unwrap_or("-")) } }
                tr { th { "amount" } td { @if let Some((amount, currency)) = &l.amount { (money_of(*amount, currency)) } @else { "-" } } }
                tr { th { "sealed" } td {
                    @if l.envelope.seal.is_sealed() { span.ok { "yes: written by this deployment" } }
                    @else { span.warn { "NO: its x-refund-* headers are not believed; a replay treats it as a new job keyed from its body" } }
                } }
            }
            h2 { "History" }
            table {
                tr { th { "first seen" } td { (header("x-refund-first-seen")) } }
                tr { th { "attempts" } td { (l.attempts) } }
                tr { th { "last seen" } td { (header("x-refund-last-seen")) } }
                tr { th { "keyed day" } td { (header("x-refund-date")) } }
                tr { th { "ended as" } td { (l.class.map_or("unknown", |c| c.as_str())) ": " (l.error) } }
            }
            h2 { "Where its refund stands" }
            table {
                tr { th { "idempotency key" } td { code { (facts.key.as_deref().unwrap_or("not known yet (no worker has keyed it)")) } } }
                @match &facts.record {
                    Some(r) => {
                        tr { th { "record" } td { (r.state.as_str()) @if r.uncertain { span.warn { " (uncertain: a send may have reached the provider)" } } } }
                        tr { th { "claims" } td { (r.claims) } }
                        @if let Some(result) = &r.result {
                            tr { th { "refund" } td { (result.refund.refund_id) " at " (result.provider.as_str()) ", " (result.refund.amount) " (minor units)" } }
                        }
                        @if let Some(reason) = &r.reason { tr { th { "why it ended" } td { (reason) } } }
                        @if let Some(fp) = &r.fingerprint { tr { th { "its key is for" } td { code { (fp) } } } }
                    }
                    None => { tr { th { "record" } td { "none: never claimed, or expired" } } }
                }
                @match &facts.receipt {
                    Some(r) => { tr { th { "receipt" } td { "#" (r.seq) " sealed " (r.sealed_at) " · " code { (&r.hash[..r.hash.len().min(16)]) } } } }
                    None => { tr { th { "receipt" } td { "none" } } }
                }
            }
            form method="post" action={ "/dead-letters/" (l.job_id) "/lookup" } {
                input type="hidden" name="csrf" value=(session.csrf);
                button type="submit" { "Look it up at the provider" }
                " (read-only: asks the provider whether a refund exists under this key)"
            }
            @if let Some(answer) = &facts.lookup { p { strong { "Provider: " } (answer) } }
            h2 { "Headers" }
            table {
                @for (k, v) in &l.headers { tr { td { code { (k) } } td { (v) } } }
            }
            h2 { "Body" }
            pre { (body) }
            @if !session.read_only {
                div.actions {
                    form.inline method="post" action={ "/dead-letters/" (l.job_id) "/replay" } {
                        input type="hidden" name="csrf" value=(session.csrf);
                        button type="submit" { "Preview a replay" }
                    }
                    " "
                    (remove_buttons(session, &[("job_id", &l.job_id)]))
                }
                h2 { "Edit & retry" }
                p {
                    "Fix the body and preview the replay; it is validated as a job first. "
                    @if l.class != Some(crate::outcome::FailureClass::Invalid) {
                        "This letter is not invalid: the fields of its idempotency key (payment_id, order_id, date, idempotency_key) are locked, except that a letter whose key belongs to a different refund may take an idempotency_key of its own."
                    }
                }
                form method="post" action={ "/dead-letters/" (l.job_id) "/replay" } {
                    input type="hidden" name="csrf" value=(session.csrf);
                    textarea name="body" rows="12" cols="100" { (body) }
                    br;
                    button type="submit" { "Preview the edited replay" }
                }
            }
        },
    )
}

/// Where a letter's job stands, for its page.
#[derive(Default)]
pub(super) struct LetterFacts {
    /// Its idempotency key, once a worker keyed it.
    pub(super) key: Option<String>,
    /// The record under that key.
    pub(super) record: Option<crate::store::RecordView>,
    /// The receipt sealed under that key.
    pub(super) receipt: Option<crate::governance::receipt::Receipt>,
    /// The provider's answer, when the operator asked.
    pub(super) lookup: Option<String>,
    /// Something the operator must know first (a job id that several letters carry).
    pub(super) warning: Option<String>,
}

/// The audit log, newest last, with the verification result.
pub(super) fn audit(session: &Session, entries: &[Entry], report: &AuditReport) -> Markup {
    layout(
        "Audit log",
        Some(session),
        html! {
            @if report.is_intact() {
                p.ok { "Intact: " (report.checked) " entries verified (hashes, signatures, links)." }
            } @else {
                p.warn { "NOT intact:" }
                ul.warn { @for (seq, what) in &report.problems { li { "entry " (seq) ": " (what) } } }
            }
            table {
                tr { th { "#" } th { "when" } th { "who" } th { "via" } th { "action" } th { "target" } th { "result" } }
                @for e in entries {
                    tr {
                        td { (e.seq) } td { (e.at) } td { (e.action.who) } td { (e.action.via) }
                        td { (e.action.action) } td { code { (e.action.target) } } td { code { (e.action.result) } }
                    }
                }
            }
        },
    )
}

/// A replay's preview (the dry run) and the form that confirms it.
pub(super) fn replay_preview(
    session: &Session,
    action: &str,
    report: &crate::commands::dlq::ReplayReport,
    hidden: &[(&str, &str)],
) -> Markup {
    layout(
        "Replay: preview",
        Some(session),
        html! {
            p { "Nothing has been sent yet. This is what the replay would do:" }
            (report_table(report))
            p { strong { (report.summary) } }
            form method="post" action=(action) {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="confirm" value="yes";
                @for (name, value) in hidden {
                    @if !value.is_empty() { input type="hidden" name=(name) value=(value); }
                }
                button type="submit" { "Confirm the replay" }
                " " a href="/dead-letters" { "Cancel" }
            }
        },
    )
}

/// What a replay did.
pub(super) fn replay_done(
    session: &Session,
    report: &crate::commands::dlq::ReplayReport,
    canary: Option<&str>,
) -> Markup {
    layout(
        "Replay: done",
        Some(session),
        html! {
            @if let Some(canary) = canary { p { strong { (canary) } } }
            (report_table(report))
            p { strong { (report.summary) } }
            p { a href="/dead-letters" { "Back to the dead letters" } " · " a href="/audit" { "Audit log" } }
        },
    )
}

/// A purge's or an archive's preview: the letters and the form that confirms it.
pub(super) fn remove_preview(
    session: &Session,
    preview: &str,
    letters: &[&DeadLetter],
    hidden: &[(&str, &str)],
    archive: bool,
) -> Markup {
    layout(
        if archive {
            "Archive: preview"
        } else {
            "Purge: preview"
        },
        Some(session),
        html! {
            p { "Nothing has been removed yet." }
            p { strong { (preview) } }
            (letter_table(letters))
            form method="post" action="/dead-letters/remove" {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="confirm" value="yes";
                @for (name, value) in hidden {
                    @if !value.is_empty() { input type="hidden" name=(name) value=(value); }
                }
                button type="submit" { @if archive { "Confirm the archive" } @else { "Confirm the purge" } }
                " " a href="/dead-letters" { "Cancel" }
            }
        },
    )
}

/// What a purge or an archive did.
pub(super) fn removed(session: &Session, said: &str) -> Markup {
    layout(
        "Removed",
        Some(session),
        html! {
            p { strong { (said) } }
            p { a href="/dead-letters" { "Back to the dead letters" } " · " a href="/audit" { "Audit log" } }
        },
    )
}

fn report_table(report: &crate::commands::dlq::ReplayReport) -> Markup {
    html! {
        table {
            tr { th { "what" } th { "job id" } th { "why" } }
            @for (tag, id, why) in &report.lines { tr { td { (tag) } td { (id) } td { (why) } } }
        }
    }
}

/// One mandate row.
pub(super) struct MandateRow {
    pub(super) mandate: crate::governance::mandate::Mandate,
    pub(super) spent: u64,
    pub(super) valid: bool,
    pub(super) state: &'static str,
}

/// The mandates: caps, spent and left today, expiry, publishers, state, signature. Granting
/// and revoking stay finance's (`refund-worker mandate grant|revoke`, with their key).
pub(super) fn mandates(session: &Session, today: &str, rows: &[MandateRow]) -> Markup {
    layout(
        "Mandates",
        Some(session),
        html! {
            p { "Spent and left are for " (today) " (UTC). Granting and revoking are finance's, with their key: "
                code { "refund-worker mandate grant|revoke" } "." }
            table {
                tr { th { "id" } th { "agent" } th { "publishers" } th { "per refund" } th { "per day" }
                     th { "spent today" } th { "left today" } th { "expires" } th { "version" } th { "state" } th { "signature" } }
                @for r in rows {
                    @let m = &r.mandate;
                    @let cur = |minor: u64| crate::job::format_money(minor, m.currency);
                    tr {
                        td { (m.id.as_str()) } td { (m.agent_id.as_str()) } td { (m.publishers.join(", ")) }
                        td { (cur(m.max_per_refund)) } td { (cur(m.max_per_day)) }
                        td { (cur(r.spent)) } td { (cur(m.max_per_day.saturating_sub(r.spent))) }
                        td { (m.expires_at.as_deref().unwrap_or("never")) } td { (m.version) }
                        td { (r.state) }
                        @if r.valid { td.ok { "valid" } } @else { td.warn { "INVALID: refused" } }
                    }
                }
            }
        },
    )
}

/// The receipt chain: its head and a verification run now.
pub(super) fn receipts(
    session: &Session,
    head: Option<&(u64, String)>,
    report: &crate::governance::receipt::ChainReport,
    at: &str,
    public_key: &str,
) -> Markup {
    layout(
        "Receipts",
        Some(session),
        html! {
            p { @match head {
                Some((seq, hash)) => { (seq) " receipts; chain head " code { (hash) } }
                None => "no receipts yet",
            } }
            @if report.is_intact() {
                p.ok { "Verified at " (at) ": " (report.checked) " receipts intact (hashes, signatures, links, spend tallies)." }
            } @else {
                p.warn { "Verified at " (at) ": NOT intact" }
                ul.warn { @for p in &report.problems { li { (p.to_string()) } } }
            }
            p { "Auditors verify an export offline with the public key " code { (public_key) } "." }
        },
    )
}
