//! Per-provider pause (ops): while a provider is paused, its guard refuses every call before it
//! leaves the worker, as if its circuit were open — jobs wait in the retry tiers without
//! spending an attempt, nothing reaches the provider and nothing is retried into exhaustion.
//!
//! The board is what this worker believes; the truth lives in Redis (`store::control`), and
//! the worker's wiring copies it here every second, so every worker honours a pause or a
//! resume within seconds.

use std::{collections::HashMap, sync::RwLock, time::Duration};

use prometheus::IntGaugeVec;

use crate::job::ProviderName;

/// How long a call refused by a pause stays away before trying again.
pub const PAUSED_RETRY: Duration = Duration::from_secs(5);

/// The paused providers, as this worker last read them.
#[derive(Debug)]
pub struct PauseBoard {
    /// Provider → why it is paused (who, when, the reason).
    paused: RwLock<HashMap<ProviderName, String>>,
    /// `refunds_provider_paused{provider}`.
    gauge: IntGaugeVec,
}

impl PauseBoard {
    /// An empty board reporting on `gauge` (every provider at 0).
    pub fn new(gauge: IntGaugeVec) -> Self {
        for provider in ProviderName::ALL {
            gauge.with_label_values(&[provider.as_str()]).set(0);
        }
        Self {
            paused: RwLock::new(HashMap::new()),
            gauge,
        }
    }

    /// Replaces the whole board with `paused` (provider → why).
    pub fn set_all(&self, paused: HashMap<ProviderName, String>) {
        for provider in ProviderName::ALL {
            self.gauge
                .with_label_values(&[provider.as_str()])
                .set(i64::from(paused.contains_key(&provider)));
        }
        *self.paused.write().unwrap_or_else(|p| p.into_inner()) = paused;
    }

    /// Why `provider` is paused, when it is.
    pub fn why(&self, provider: ProviderName) -> Option<String> {
        self.paused
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&provider)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_is_seen_and_reported_until_the_board_is_replaced() {
        let gauge = IntGaugeVec::new(prometheus::Opts::new("p", "p"), &["provider"]).unwrap();
        let board = PauseBoard::new(gauge.clone());
        assert_eq!(board.why(ProviderName::Stripe), None);
        board.set_all(HashMap::from([(
            ProviderName::Stripe,
            "incident".to_owned(),
        )]));
        assert_eq!(board.why(ProviderName::Stripe).as_deref(), Some("incident"));
        assert_eq!(board.why(ProviderName::Pix), None);
        assert_eq!(gauge.with_label_values(&["stripe"]).get(), 1);
        board.set_all(HashMap::new());
        assert_eq!(board.why(ProviderName::Stripe), None);
        assert_eq!(gauge.with_label_values(&["stripe"]).get(), 0);
    }
}
