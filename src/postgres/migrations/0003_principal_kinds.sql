-- saldos schema, version 3: principals carry their kind. A customer's is
-- 'customer:<sub>', a service client's 'service:<client_id>' (SPEC section 6:
-- the two never collide, even when the names are equal); '' stays the
-- principal of every request while authentication is off. Nothing here
-- rewrites or locks a table for long: one trigger, one INSERT … SELECT.
--
-- Rows written before (a bare name, kind unknown) may have been either kind.
-- So that no retried key is debited twice across the upgrade, each live key
-- of a bare name is remembered for both kinds, with its outcome; the bare
-- row stays (instances of version 2 still read it). Audit rows keep their
-- bare names: they are history, and read as "kind unknown".
--
-- An instance of version 2 still running during a rolling deploy would claim
-- keys under bare names, which this version's instances never look up: its
-- claims are refused from now on (the batch fails, nothing is applied, the
-- client gets 503 and retries, reaching an instance of this version).

CREATE FUNCTION saldos_refuse_kindless_key() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'idempotency key of a principal without a kind: an instance older than schema version 3'
        USING ERRCODE = 'check_violation';
END
$$;

CREATE TRIGGER idempotency_keys_kinded
    BEFORE INSERT OR UPDATE ON idempotency_keys
    FOR EACH ROW
    WHEN (NEW.principal <> '' AND NEW.principal !~ '^(customer|service):')
    EXECUTE FUNCTION saldos_refuse_kindless_key();

INSERT INTO idempotency_keys (principal, key, fingerprint, kind, usuario, monto, debited, saldo,
                              created_at, expires_at)
SELECT kinds.prefix || ik.principal, ik.key, ik.fingerprint, ik.kind, ik.usuario, ik.monto,
       ik.debited, ik.saldo, ik.created_at, ik.expires_at
  FROM idempotency_keys ik
 CROSS JOIN (VALUES ('customer:'), ('service:')) AS kinds (prefix)
 WHERE ik.principal <> '' AND ik.principal !~ '^(customer|service):'
   AND ik.expires_at > now() AND ik.debited IS NOT NULL
ON CONFLICT (principal, key) DO NOTHING;
