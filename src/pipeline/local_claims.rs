//! The claims this process holds right now. A second copy of a job delivered to the same
//! worker while the first is still running finds the key claimed; instead of retrying after
//! the claim's whole lease (the holder might be a worker that died), it waits here for its
//! sibling to finish, which this process knows, then claims again and finds the refund done.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The keys this process holds claims on, each with the signal its release gives.
#[derive(Debug, Clone, Default)]
pub(crate) struct LocalClaims {
    held: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

/// One claim held by this process, released (and its waiters woken) when dropped.
#[derive(Debug)]
pub(crate) struct Hold {
    claims: LocalClaims,
    key: String,
    released: Arc<Notify>,
}

impl LocalClaims {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes that this process holds the claim on `key` until the hold is dropped.
    pub(crate) fn hold(&self, key: &str) -> Hold {
        let released = Arc::new(Notify::new());
        self.map().insert(key.to_owned(), Arc::clone(&released));
        Hold {
            claims: self.clone(),
            key: key.to_owned(),
            released,
        }
    }

    /// When this process holds `key`: waits until it lets go (at most `at_most`) and says
    /// `true`; `false` at once when the holder is elsewhere, and when the worker stops while
    /// waiting (the copy then goes round a retry tier, as before).
    pub(crate) async fn wait_for(
        &self,
        key: &str,
        at_most: Duration,
        shutdown: &CancellationToken,
    ) -> bool {
        let Some(released) = self.map().get(key).cloned() else {
            return false;
        };
        let notified = released.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Let go between the look-up and `enable`: nothing to wait for.
        let still_held = self
            .map()
            .get(key)
            .is_some_and(|n| Arc::ptr_eq(n, &released));
        if still_held {
            tokio::select! {
                () = shutdown.cancelled() => return false,
                _ = tokio::time::timeout(at_most, notified) => {}
            }
        }
        !shutdown.is_cancelled()
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut map = self.claims.map();
        if map
            .get(&self.key)
            .is_some_and(|n| Arc::ptr_eq(n, &self.released))
        {
            map.remove(&self.key);
        }
        drop(map);
        self.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sibling_waits_for_the_local_holder_and_no_longer() {
        let claims = LocalClaims::default();
        let running = CancellationToken::new();
        assert!(
            !claims.wait_for("k", Duration::from_secs(5), &running).await,
            "nobody here holds it"
        );
        let hold = claims.hold("k");
        let waiter = {
            let claims = claims.clone();
            let running = running.clone();
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let local = claims
                    .wait_for("k", Duration::from_secs(30), &running)
                    .await;
                (local, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(hold);
        let (local, waited) = waiter.await.unwrap();
        assert!(local);
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        assert!(
            !claims.wait_for("k", Duration::from_secs(5), &running).await,
            "let go"
        );
    }

    #[tokio::test]
    async fn a_wait_is_bounded() {
        let claims = LocalClaims::default();
        let _hold = claims.hold("k");
        let started = tokio::time::Instant::now();
        let running = CancellationToken::new();
        assert!(
            claims
                .wait_for("k", Duration::from_millis(100), &running)
                .await
        );
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_stopping_worker_does_not_wait() {
        let claims = LocalClaims::default();
        let _hold = claims.hold("k");
        let stopping = CancellationToken::new();
        let stop = stopping.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            stop.cancel();
        });
        let started = tokio::time::Instant::now();
        assert!(
            !claims
                .wait_for("k", Duration::from_secs(30), &stopping)
                .await,
            "the copy goes round a retry tier instead"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
