//! `cluster status` figures: what each coordinator stores and how many hinted handoffs it
//! holds (versions an owner is known to lack). This coordinator's are read from its store
//! when asked; the others' are asked over the links every [`POLL`] and kept with their age.

use std::time::{Duration, Instant};

use tm_noise::PublicKey;
use tm_storage::replication::local::{self, Figures};

use super::wire::{Req, Resp};
use super::ObjectReplication;

/// How often the other coordinators are asked for their figures.
const POLL: Duration = Duration::from_secs(2);

/// One coordinator's figures in `cluster status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoordinatorFigures {
    /// Its static key.
    pub key: PublicKey,
    /// What it stores.
    pub figures: Figures,
    /// How old the figures are (zero for this coordinator's).
    pub age: Duration,
}

impl ObjectReplication {
    /// This coordinator's figures and the last known ones of the others (blocking: reads the
    /// store; call off the async workers).
    pub fn figures(&self) -> Vec<CoordinatorFigures> {
        let mut out = Vec::new();
        if let Ok(f) = local::figures(&self.inner.store) {
            out.push(CoordinatorFigures {
                key: self.inner.coord.public_key(),
                figures: f,
                age: Duration::ZERO,
            });
        }
        let cached = self
            .inner
            .peer_figures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (id, key) in self.members() {
            if let Some((f, at)) = cached.get(&id) {
                out.push(CoordinatorFigures {
                    key,
                    figures: *f,
                    age: at.elapsed(),
                });
            }
        }
        out
    }

    /// Asks every linked coordinator for its figures, every [`POLL`].
    pub(super) async fn poll_figures(self) {
        loop {
            tokio::time::sleep(POLL).await;
            for (id, key) in self.members() {
                if id == self.inner.me || !self.inner.coord.shared.relay.has_link(&key) {
                    continue;
                }
                if let Ok((
                    Resp::Status {
                        bytes,
                        objects,
                        capacity,
                        under_replicated,
                    },
                    _,
                )) = self.request(id, &Req::Status, &[]).await
                {
                    let f = Figures {
                        bytes,
                        objects,
                        capacity,
                        under_replicated,
                    };
                    self.inner
                        .peer_figures
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id, (f, Instant::now()));
                }
            }
        }
    }
}
