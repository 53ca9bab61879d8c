//! RabbitMQ: connections, the topology, and publishing with confirms.
//!
//! A publish is a success only when the broker confirmed it and did not return it as
//! unroutable; anything else is an error the caller must act on (never a silent drop).

pub mod dead_letters;
pub mod envelope;
pub mod events;
mod outgoing;
pub mod seal;
pub mod topology;

use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};

pub use envelope::{Envelope, headers};
pub use outgoing::{BATCH, OutgoingJob, job_properties, publish_jobs, publish_jobs_to};
pub use topology::{ROUTING_KEY, Topology};

/// Why RabbitMQ could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No connection.
    #[error("{} RabbitMQ at {address}: {cause} — {hint}", if hint.starts_with("is it running") { "cannot reach" } else { "refused by" })]
    Unreachable {
        /// host:port, without credentials.
        address: String,
        /// The underlying error.
        cause: String,
        /// What to check: whether it runs, the login, or the virtual host.
        hint: &'static str,
    },
    /// The broker refused or lost a message.
    #[error("publish not confirmed: {0}")]
    NotConfirmed(String),
    /// A channel-level failure (declaring, consuming, a closed channel).
    #[error("RabbitMQ: {0}")]
    Channel(#[from] lapin::Error),
}

/// Checks that `url` reads as an AMQP URL, saying why not without repeating it (it may hold
/// a password).
pub fn check_url(url: &str) -> Result<(), String> {
    url.parse::<lapin::uri::AMQPUri>().map(|_| ()).map_err(|e| {
        // Some parse errors quote the whole input, password and all: then say less.
        let why = e.to_string();
        let why = if why.contains(url.trim()) || url.split([':', '@', '/']).any(|part| part.len() > 3 && why.contains(part)) {
            "it does not parse".to_owned()
        } else {
            why
        };
        format!(
            "AMQP_URL (--amqp-url) is not an AMQP URL ({why}); expected amqp://USER:PASSWORD@HOST:5672/VHOST, e.g. amqp://guest:guest@127.0.0.1:5672/%2f"
        )
    })
}

/// The user an AMQP URL connects as (`guest` when it names none, as RabbitMQ's default).
pub fn url_user(url: &str) -> String {
    url.parse::<lapin::uri::AMQPUri>()
        .map(|uri| uri.authority.userinfo.username)
        .unwrap_or_else(|_| "guest".to_owned())
}

/// Connects, naming the connection so operators can see who is who in the management UI.
pub async fn connect(url: &str, name: &str) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let connecting = Connection::connect(url, properties);
    match tokio::time::timeout(std::time::Duration::from_secs(10), connecting).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => {
            let cause = crate::diagnostics::root_cause(&e);
            let hint = if cause.contains("ACCESS_REFUSED") || cause.contains("ACCESS-REFUSED") {
                "RabbitMQ refused the login: check the user and password in AMQP_URL (--amqp-url)"
            } else if cause.contains("NOT_ALLOWED") || cause.contains("NOT-ALLOWED") {
                "RabbitMQ refused the virtual host: check the vhost in AMQP_URL (--amqp-url; %2f is /) and the user's permissions"
            } else {
                "is it running? see README"
            };
            Err(BrokerError::Unreachable {
                address: address_of(url),
                cause,
                hint,
            })
        }
        Err(_) => Err(BrokerError::Unreachable {
            address: address_of(url),
            cause: "no answer within 10s".into(),
            hint: "is it running? see README",
        }),
    }
}

/// `host:port` of an AMQP URL, without user and password.
pub fn address_of(url: &str) -> String {
    crate::diagnostics::host_port(url, 5672)
}

/// A channel in confirm mode.
#[derive(Clone, Debug)]
pub struct Publisher {
    /// The confirm-mode channel.
    channel: Channel,
    /// The broker user of its connection, set as the AMQP `user_id` of every job it
    /// publishes (RabbitMQ refuses any other): who may spend a mandate (SPEC §5).
    user: Option<String>,
}

impl Publisher {
    /// Opens a confirm-mode channel on `connection`.
    pub async fn open(connection: &Connection) -> Result<Self, BrokerError> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            user: None,
        })
    }

    /// Opens a confirm-mode channel on `connection`, made as broker user `user`: the jobs it
    /// publishes carry it as their `user_id`.
    pub async fn open_as(connection: &Connection, user: &str) -> Result<Self, BrokerError> {
        let mut publisher = Self::open(connection).await?;
        publisher.user = Some(user.to_owned());
        Ok(publisher)
    }

    /// The broker user its jobs are published as, if it says.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The channel (for declaring and inspecting queues).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Sends one message that must be routed (a returned message is an error), without
    /// waiting; await the returned confirm with [`confirmed`].
    pub async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<PublisherConfirm, BrokerError> {
        self.send_with(true, exchange, routing_key, body, properties)
            .await
    }

    /// Publishes a notification nobody may be listening to (outcome events, replies): the
    /// broker must confirm it, but no queue has to take it.
    pub async fn notify(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        let confirm = self
            .send_with(false, exchange, routing_key, body, properties)
            .await?;
        confirmed(confirm).await
    }

    async fn send_with(
        &self,
        mandatory: bool,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<PublisherConfirm, BrokerError> {
        let options = BasicPublishOptions {
            mandatory,
            ..Default::default()
        };
        Ok(self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                body,
                properties,
            )
            .await?)
    }

    /// Publishes one message and waits for the broker's confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        confirmed(self.send(exchange, routing_key, body, properties).await?).await
    }
}

/// Waits for one confirm: `Ok` only for an ack of a routed message.
pub async fn confirmed(confirm: PublisherConfirm) -> Result<(), BrokerError> {
    match confirm.await? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(BrokerError::NotConfirmed(format!(
            "returned unroutable ({} {})",
            returned.reply_code, returned.reply_text
        ))),
        Confirmation::Nack(_) => Err(BrokerError::NotConfirmed(
            "the broker refused it (queue full or unavailable)".into(),
        )),
        Confirmation::NotRequested => Err(BrokerError::NotConfirmed(
            "channel is not in confirm mode".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_hides_credentials() {
        assert_eq!(
            address_of("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "127.0.0.1:5672"
        );
        assert_eq!(address_of("amqp://rabbit/%2f"), "rabbit:5672");
    }
}
