//! The RabbitMQ topology under one prefix (SPEC §3), declared idempotently by every command
//! that needs it. A different prefix is a fully separate set, which is how tests, benchmarks
//! and the demo stay out of each other's way.

use std::time::Duration;

use lapin::{
    Channel, ExchangeKind,
    options::{
        ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

/// Deliveries (operator reads) a dead letter survives; effectively unlimited.
pub const DEAD_LETTER_DELIVERY_LIMIT: i64 = 1_000_000_000;

/// The routing key jobs are published with.
pub const ROUTING_KEY: &str = "refund";

/// Names and arguments of every exchange and queue under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Everything is named `{prefix}…`.
    prefix: String,
    /// One retry queue per delay, in order.
    retry_delays: Vec<Duration>,
    /// Deliveries before the broker dead-letters a message that keeps failing workers.
    delivery_limit: u32,
}

impl Topology {
    /// The topology for `prefix` with the configured retry tiers and delivery limit.
    pub fn new(prefix: &str, retry_delays: &[Duration], delivery_limit: u32) -> Self {
        Self {
            prefix: prefix.to_owned(),
            retry_delays: retry_delays.to_vec(),
            delivery_limit,
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether `name` is one of this topology's exchanges or queues (`{prefix}` or
    /// `{prefix}.…`): a publisher's `reply_to` may not name them, or a reply would land in
    /// the jobs or the dead-letter queue.
    pub fn owns(&self, name: &str) -> bool {
        name == self.prefix
            || name
                .strip_prefix(self.prefix.as_str())
                .is_some_and(|rest| rest.starts_with('.'))
    }

    /// The jobs exchange (`{prefix}`).
    pub fn jobs_exchange(&self) -> String {
        self.prefix.clone()
    }

    /// The quorum queue workers consume.
    pub fn jobs_queue(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    /// The exchange that routes dead letters into the dead-letter queue.
    pub fn dead_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    /// The dead-letter queue ops drain.
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// The topic exchange of outcome events.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// The retry delays, in order.
    pub fn retry_delays(&self) -> &[Duration] {
        &self.retry_delays
    }

    /// `{prefix}.retry.{label}`, e.g. `refunds.retry.30s`.
    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}", self.prefix, delay_label(delay))
    }

    /// Every queue that holds jobs not yet finished (the jobs queue and the retry tiers).
    pub fn work_queues(&self) -> Vec<String> {
        let mut queues = vec![self.jobs_queue()];
        queues.extend(self.retry_delays.iter().map(|d| self.retry_queue(*d)));
        queues.dedup();
        queues
    }

    /// Declares everything. Idempotent; fails if a queue exists with other arguments (for
    /// example another delivery limit), which the error message says.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let queue = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.jobs_exchange().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_exchange().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.events_exchange().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;

        channel
            .queue_declare(
                self.dead_queue().into(),
                queue,
                // Operators read letters without removing them (`dlq list`), which hands them
                // back and counts as a delivery; RabbitMQ 4 gives quorum queues a default
                // delivery limit of 20 and this queue has nowhere to dead-letter to. So the
                // limit is set explicitly, out of reach.
                quorum_args(&[(
                    "x-delivery-limit",
                    AMQPValue::LongLongInt(DEAD_LETTER_DELIVERY_LIMIT),
                )]),
            )
            .await?;
        channel
            .queue_bind(
                self.dead_queue().into(),
                self.dead_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        let limit = i64::from(self.delivery_limit);
        channel
            .queue_declare(
                self.jobs_queue().into(),
                queue,
                quorum_args(&[
                    ("x-delivery-limit", AMQPValue::LongLongInt(limit)),
                    ("x-dead-letter-exchange", text(&self.dead_exchange())),
                    ("x-dead-letter-strategy", text("at-least-once")),
                    ("x-overflow", text("reject-publish")),
                ]),
            )
            .await?;
        channel
            .queue_bind(
                self.jobs_queue().into(),
                self.jobs_exchange().into(),
                ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        for delay in &self.retry_delays {
            let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            channel
                .queue_declare(
                    self.retry_queue(*delay).into(),
                    queue,
                    quorum_args(&[
                        ("x-message-ttl", AMQPValue::LongLongInt(ttl)),
                        ("x-dead-letter-exchange", text(&self.jobs_exchange())),
                        ("x-dead-letter-routing-key", text(ROUTING_KEY)),
                        ("x-dead-letter-strategy", text("at-least-once")),
                        ("x-overflow", text("reject-publish")),
                    ]),
                )
                .await?;
        }
        Ok(())
    }

    /// Deletes everything under the prefix (the demo's and the tests' clean-up).
    pub async fn delete(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let mut queues = self.work_queues();
        queues.push(self.dead_queue());
        for queue in queues {
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in [
            self.jobs_exchange(),
            self.dead_exchange(),
            self.events_exchange(),
        ] {
            channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Queue arguments of a quorum queue, plus `extra`.
pub fn quorum_args(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-queue-type"), text("quorum"));
    for (key, value) in extra {
        args.insert(ShortString::from(*key), value.clone());
    }
    args
}

/// A short label for a delay: `1s`, `30s`, `2m`, `1h`, `1500ms`.
pub fn delay_label(delay: Duration) -> String {
    let ms = delay.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match s {
        s if s > 0 && s.is_multiple_of(3600) => format!("{}h", s / 3600),
        s if s > 0 && s.is_multiple_of(60) => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        let delays = [1, 5, 30, 120, 600].map(Duration::from_secs);
        Topology::new("refunds", &delays, 20)
    }

    #[test]
    fn names_follow_the_spec() {
        let t = topology();
        assert_eq!(t.jobs_exchange(), "refunds");
        assert_eq!(t.jobs_queue(), "refunds.jobs");
        assert_eq!(t.dead_queue(), "refunds.dead");
        assert_eq!(t.events_exchange(), "refunds.events");
        assert_eq!(
            t.work_queues(),
            [
                "refunds.jobs",
                "refunds.retry.1s",
                "refunds.retry.5s",
                "refunds.retry.30s",
                "refunds.retry.2m",
                "refunds.retry.10m"
            ]
        );
    }

    #[test]
    fn delay_labels() {
        assert_eq!(delay_label(Duration::from_millis(1500)), "1500ms");
        assert_eq!(delay_label(Duration::from_secs(90)), "90s");
        assert_eq!(delay_label(Duration::from_secs(7200)), "2h");
    }
}
