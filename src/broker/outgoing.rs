//! Publishing jobs to the jobs exchange: persistent, identified, confirmed, pipelined.

use lapin::BasicProperties;

use super::{BrokerError, Publisher, ROUTING_KEY, Topology, confirmed};

/// How many publishes are in flight before waiting for their confirms.
/// Jobs published before their confirms are awaited.
pub const BATCH: usize = 256;

/// A job body ready to publish, with the id it travels under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingJob {
    /// The AMQP `message_id`, which becomes the job id.
    pub job_id: String,
    /// The JSON body.
    pub body: Vec<u8>,
}

impl OutgoingJob {
    /// A job with a fresh id.
    pub fn new(body: Vec<u8>) -> Self {
        Self {
            job_id: uuid::Uuid::new_v4().to_string(),
            body,
        }
    }
}

/// The properties of a published job: persistent JSON, with its id and publish time, and,
/// when the publisher waits for outcomes, where to send them (`reply_to`, with the job id as
/// `correlation_id`).
pub fn job_properties(job_id: &str, reply_to: Option<&str>) -> BasicProperties {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(job_id.into())
        .with_timestamp(u64::try_from(now).unwrap_or(0))
        .with_app_id("refund-worker".into());
    match reply_to {
        Some(queue) => properties
            .with_reply_to(queue.into())
            .with_correlation_id(job_id.into()),
        None => properties,
    }
}

/// Publishes `jobs` in pipelined batches and waits for every confirm. Returns one result per
/// job, in order; `progress` is told each job's result as its confirm is awaited, in order.
pub async fn publish_jobs(
    publisher: &Publisher,
    topology: &Topology,
    jobs: &[OutgoingJob],
    reply_to: Option<&str>,
    progress: impl FnMut(bool),
) -> Vec<Result<(), BrokerError>> {
    let exchange = topology.jobs_exchange();
    publish_jobs_to(
        publisher,
        (&exchange, ROUTING_KEY),
        jobs,
        reply_to,
        progress,
    )
    .await
}

/// [`publish_jobs`] to any exchange and routing key (the benchmark's bare queue).
pub async fn publish_jobs_to(
    publisher: &Publisher,
    (exchange, routing_key): (&str, &str),
    jobs: &[OutgoingJob],
    reply_to: Option<&str>,
    mut progress: impl FnMut(bool),
) -> Vec<Result<(), BrokerError>> {
    let mut results = Vec::with_capacity(jobs.len());
    for batch in jobs.chunks(BATCH) {
        let mut pending = Vec::with_capacity(batch.len());
        for job in batch {
            pending.push(
                publisher
                    .send(
                        exchange,
                        routing_key,
                        &job.body,
                        match publisher.user() {
                            Some(user) => {
                                job_properties(&job.job_id, reply_to).with_user_id(user.into())
                            }
                            None => job_properties(&job.job_id, reply_to),
                        },
                    )
                    .await,
            );
        }
        for sent in pending {
            let result = match sent {
                Ok(confirm) => confirmed(confirm).await,
                Err(e) => Err(e),
            };
            progress(result.is_ok());
            results.push(result);
        }
    }
    results
}
