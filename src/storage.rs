//! The storage seam: what handlers call to read and debit balances, whatever
//! keeps them. Today only `memory` exists (the ledger alone, lost at exit); the
//! journal adds durability behind these same calls, so handlers never change.

use crate::ledger::{self, Debit, Ledger};
use crate::usuario::Usuario;

/// Balances and the debits that change them.
pub struct Storage {
    /// The in-memory balances every read is answered from.
    ledger: Ledger,
}

impl Storage {
    /// Storage in RAM only: state is lost when the process exits.
    pub fn memory(ledger: Ledger) -> Self {
        Self { ledger }
    }

    /// The account's current balance.
    pub fn saldo(&self, usuario: &Usuario) -> u64 {
        self.ledger.saldo(usuario)
    }

    /// Applies one check-and-debit. Async because durable storage answers only
    /// once the debit is on stable storage.
    pub async fn debit(&self, usuario: &Usuario, monto: u64) -> Result<Debit, ledger::Error> {
        self.ledger.debit(usuario, monto)
    }

    /// The balances, for seeding and inspection.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }
}
