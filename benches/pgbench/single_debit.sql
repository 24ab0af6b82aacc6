-- One debit per transaction, as a naive service would do it: upsert the
-- account, conditional update with the audit row, commit. pgbench's ceiling
-- for one debit per round trip and commit (benches/harness.sh).
\set n random(0, 9999)
\set batch random(1, 9223372036854775806)
BEGIN;
INSERT INTO accounts (usuario, saldo) VALUES ('cuenta' || :n, 1000000000000) ON CONFLICT (usuario) DO NOTHING;
WITH debited AS (
  UPDATE accounts SET saldo = saldo - 1 WHERE usuario = 'cuenta' || :n AND saldo >= 1 RETURNING usuario, saldo)
INSERT INTO debits (batch, seq, usuario, kind, monto, saldo, debited_at, principal)
SELECT :batch, 1, usuario, 'retiro', 1, saldo, now(), '' FROM debited;
COMMIT;
