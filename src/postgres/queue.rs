//! The bounded queue between requests and the connections that serve them in
//! batches: a request waits a bounded time for room, a connection's task
//! takes everything queued (up to a batch's limit) at once. Requests whose
//! deadline passed while queued are refused (503) without being sent.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Mutex, mpsc};

use crate::seam::Unavailable;

/// An item that can be refused unsent.
pub trait Deadlined {
    /// When its request stops waiting.
    fn deadline(&self) -> Instant;
    /// Answers 503: nothing was applied.
    fn refuse(self);
}

/// The sending side, held by the storage.
pub struct Sender<T> {
    sender: mpsc::Sender<T>,
}

/// The receiving side, shared by the connections' tasks.
pub struct Receiver<T> {
    receiver: Arc<Mutex<mpsc::Receiver<T>>>,
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        Self {
            receiver: self.receiver.clone(),
        }
    }
}

/// A queue holding at most `capacity` items.
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let (sender, receiver) = mpsc::channel(capacity);
    (
        Sender { sender },
        Receiver {
            receiver: Arc::new(Mutex::new(receiver)),
        },
    )
}

impl<T: Deadlined> Sender<T> {
    /// Queues `item`, waiting for room until its deadline.
    pub async fn push(&self, item: T) -> Result<(), Unavailable> {
        let deadline = item.deadline().into();
        match tokio::time::timeout_at(deadline, self.sender.send(item)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(Unavailable),
        }
    }
}

impl<T: Deadlined> Receiver<T> {
    /// Takes up to `batch_max` items into `batch` (which may hold some
    /// already): waits for at least one new item, or only until
    /// `wait_until` when given; false once every sender is gone.
    pub async fn take(
        &self,
        batch: &mut Vec<T>,
        batch_max: usize,
        wait_until: Option<Instant>,
    ) -> bool {
        assert!(batch.len() < batch_max);
        let held = batch.len();
        // Another connection's task may hold the receiver while it waits
        // for items: one with items of its own does not wait past
        // `wait_until` for it.
        let mut receiver = match wait_until {
            None => self.receiver.lock().await,
            Some(until) => {
                match tokio::time::timeout_at(until.into(), self.receiver.lock()).await {
                    Ok(receiver) => receiver,
                    Err(_) => return true,
                }
            }
        };
        while batch.len() == held {
            let next = match wait_until {
                None => receiver.recv().await,
                Some(until) => match tokio::time::timeout_at(until.into(), receiver.recv()).await {
                    Ok(next) => next,
                    Err(_) => return true,
                },
            };
            let Some(first) = next else {
                return false;
            };
            keep_if_waiting(batch, first);
            while batch.len() < batch_max {
                match receiver.try_recv() {
                    Ok(item) => keep_if_waiting(batch, item),
                    Err(_) => break,
                }
            }
        }
        true
    }
}

fn keep_if_waiting<T: Deadlined>(batch: &mut Vec<T>, item: T) {
    if item.deadline() <= Instant::now() {
        item.refuse();
    } else {
        batch.push(item);
    }
}
