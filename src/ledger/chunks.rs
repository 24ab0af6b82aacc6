//! Visiting a shard's accounts a bounded chunk per lock hold, so that a
//! reader of every account (the snapshot) never makes debits of that shard
//! wait for more than one chunk.
//!
//! A chunk resumes at the bucket index where the previous one stopped. That
//! is sound because of where hashbrown keeps entries: an insert fills an empty
//! bucket and moves no other entry, unless the table grows, which moves every
//! entry and changes the bucket count. (Rehashing in place, which moves
//! entries at the same bucket count, needs the tombstones removals leave: the
//! ledger removes no account.) So between chunks of unchanged bucket count:
//! - an account stored when the visit began is in the same bucket: it is
//!   visited exactly once, before or after the cursor;
//! - an account inserted since may land before or after the cursor: it is
//!   visited once or not at all.
//!
//! When the bucket count changed the visit must start over: the chunk says
//! [`Chunk::Moved`], and whatever the caller kept from the earlier chunks of
//! this shard must go. A shard grows by doubling, so it starts over at most
//! once per doubling.

use std::ops::ControlFlow;

use super::{Account, Kept, Ledger, Stored};

/// Where the visit of one shard, a chunk per lock hold, goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardCursor {
    /// The shard visited.
    shard: usize,
    /// The first bucket of the next chunk.
    bucket_next: usize,
    /// The shard's bucket count when the visit began (0: not begun).
    bucket_count: usize,
}

impl ShardCursor {
    /// A visit of shard `shard` from its first bucket.
    pub fn new(shard: usize) -> Self {
        Self {
            shard,
            bucket_next: 0,
            bucket_count: 0,
        }
    }
}

/// How a chunk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Buckets remain: call again.
    More,
    /// Every bucket was visited.
    Done,
    /// The shard grew since the previous chunk, moving its accounts: no
    /// account was visited, and the cursor starts the shard over. Drop what
    /// the earlier chunks gave, then call again.
    Moved,
}

impl Ledger {
    /// Visits the stored accounts of at most `bucket_max` buckets of the
    /// cursor's shard, under its lock, until `visit` breaks (after the account
    /// it was given). Each account is seen whole; see the module doc for
    /// which accounts a whole visit sees.
    pub fn visit_chunk(
        &self,
        cursor: &mut ShardCursor,
        bucket_max: usize,
        mut visit: impl FnMut(Stored<'_>) -> ControlFlow<()>,
    ) -> Chunk {
        assert!(bucket_max > 0, "a chunk visits at least one bucket");
        let shard = self.accounts.lock_index(cursor.shard);
        let bucket_count = shard.num_buckets();
        if cursor.bucket_count != 0 && cursor.bucket_count != bucket_count {
            *cursor = ShardCursor::new(cursor.shard);
            return Chunk::Moved;
        }
        cursor.bucket_count = bucket_count;
        let bucket_end = bucket_count.min(cursor.bucket_next + bucket_max);
        while cursor.bucket_next < bucket_end {
            let bucket = cursor.bucket_next;
            cursor.bucket_next += 1;
            if let Some(account) = shard.get_bucket(bucket)
                && visit(stored(account)).is_break()
            {
                break;
            }
        }
        debug_assert!(cursor.bucket_next <= bucket_count);
        if cursor.bucket_next == bucket_count {
            Chunk::Done
        } else {
            Chunk::More
        }
    }
}

/// An account as a snapshot stores it.
fn stored(account: &Account) -> Stored<'_> {
    Stored {
        usuario: &account.usuario,
        saldo: account.saldo,
        last_record: account.last_record,
        history: account.history.as_deref().map(|Kept(history)| history),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::ledger::{DebitKind, Limits, Stamp};
    use crate::usuario::Usuario;

    fn ledger(shard_count: usize) -> Ledger {
        Ledger::new(Limits {
            shard_count,
            opening_saldo: 1000,
            accounts_max: 1 << 20,
            history_per_account: 2,
        })
    }

    fn usuario(n: usize) -> Usuario {
        Usuario::new(&format!("cuenta{n}")).unwrap()
    }

    fn debit(ledger: &Ledger, n: usize, id: u64) {
        let stamp = |_| Stamp::new(id, DebitKind::Retiro, 1, 0);
        ledger.debit(&usuario(n), 1, stamp).unwrap();
    }

    /// Visits every shard a chunk of `bucket_max` at a time, calling
    /// `between` after every chunk; returns how often each account was seen
    /// (in the visit that completed) and how many visits started over.
    fn visit_all(
        ledger: &Ledger,
        bucket_max: usize,
        mut between: impl FnMut(),
    ) -> (HashMap<String, usize>, usize) {
        let (mut seen, mut restarts) = (HashMap::new(), 0);
        for shard in 0..ledger.shard_count() {
            let mut cursor = ShardCursor::new(shard);
            let mut seen_in_shard: HashMap<String, usize> = HashMap::new();
            loop {
                let chunk = ledger.visit_chunk(&mut cursor, bucket_max, |stored| {
                    *seen_in_shard.entry(stored.usuario.to_owned()).or_default() += 1;
                    ControlFlow::Continue(())
                });
                match chunk {
                    Chunk::More => between(),
                    Chunk::Done => break,
                    Chunk::Moved => {
                        seen_in_shard.clear();
                        restarts += 1;
                    }
                }
            }
            seen.extend(seen_in_shard);
        }
        (seen, restarts)
    }

    #[test]
    fn a_quiet_ledger_is_visited_once_per_account() {
        // Every stored account is seen exactly once, in chunks of one bucket
        // as in chunks of many.
        let ledger = ledger(4);
        for n in 0..500 {
            debit(&ledger, n, 1);
        }
        for bucket_max in [1, 7, 1 << 20] {
            let (seen, restarts) = visit_all(&ledger, bucket_max, || {});
            assert_eq!(restarts, 0);
            assert_eq!(seen.len(), 500);
            assert!(seen.values().all(|&count| count == 1), "{seen:?}");
        }
    }

    #[test]
    fn accounts_inserted_between_chunks_never_hide_or_repeat_others() {
        // Inserts between chunks, enough to grow every shard several times:
        // each account stored before the visit is seen exactly once, each
        // inserted during it at most once, and growth makes a shard start
        // over rather than skip or repeat.
        let ledger = ledger(2);
        let before = 300;
        for n in 0..before {
            debit(&ledger, n, 1);
        }
        let (mut next, mut id) = (before, 1);
        let (seen, restarts) = visit_all(&ledger, 16, || {
            // Once, in the first shard's visit: more accounts of that shard
            // than its table holds, so it grows whatever the hash's seed.
            let grown_through = 4 * before;
            for n in next..grown_through {
                if ledger.shard_of(&usuario(n)) == 0 {
                    debit(&ledger, n, 1);
                }
            }
            next = next.max(grown_through);
            for _ in 0..5 {
                debit(&ledger, next, 1);
                next += 1;
            }
            // Accounts visited or not yet change between chunks too.
            id += 1;
            debit(&ledger, next % before, id);
        });
        assert!(restarts > 0, "the shards grew during the visit");
        assert!(seen.values().all(|&count| count == 1), "{seen:?}");
        for n in 0..before {
            assert!(seen.contains_key(usuario(n).as_str()), "account {n} missed");
        }
        assert!(seen.len() <= next);
    }
}
