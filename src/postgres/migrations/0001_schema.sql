-- saldos schema, version 1 (SPEC section 8). Applied once, in one
-- transaction, under the migration advisory lock.

-- The settings fixed when the database was first used: an instance started
-- with others refuses to start.
CREATE TABLE saldos_settings (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    opening_saldo bigint  NOT NULL CHECK (opening_saldo >= 0),
    seed          text    NOT NULL
);

-- Accounts that were seeded or debited; every other one has the opening
-- balance, so reading never writes. Room left in each page keeps a debit's
-- update HOT (no index entry per update: the balance is not indexed).
CREATE TABLE accounts (
    usuario text   PRIMARY KEY,
    saldo   bigint NOT NULL CHECK (saldo >= 0)
) WITH (fillfactor = 80);

-- One row per committed debit batch (debits = how many were applied), or a
-- fence (debits NULL) written by an instance that lost a batch's connection
-- before learning its outcome: the batch's own insert of this id then fails,
-- so a fenced batch can never commit later.
CREATE TABLE debit_batches (
    id          bigint      PRIMARY KEY,
    debits      integer     CHECK (debits >= 0),
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX debit_batches_recorded_at ON debit_batches (recorded_at);

-- The audit trail: every applied debit, with the balance it left.
CREATE TABLE debits (
    batch           bigint      NOT NULL,
    seq             integer     NOT NULL,
    usuario         text        NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('pago', 'retiro')),
    monto           bigint      NOT NULL CHECK (monto > 0),
    saldo           bigint      NOT NULL CHECK (saldo >= 0),
    debited_at      timestamptz NOT NULL,
    principal       text        NOT NULL,
    idempotency_key text,
    PRIMARY KEY (batch, seq)
);
CREATE INDEX debits_usuario ON debits (usuario, debited_at);

-- Remembered outcomes of keyed requests, per principal ('' without auth).
CREATE TABLE idempotency_keys (
    principal   text        NOT NULL,
    key         text        NOT NULL,
    fingerprint bigint      NOT NULL,
    kind        text        CHECK (kind IN ('pago', 'retiro')),
    usuario     text,
    monto       bigint,
    debited     boolean,
    saldo       bigint,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);

-- A batch of debits in one statement, one transaction, one commit. Locks are
-- taken in one global order so batches of different instances never
-- deadlock: idempotency keys first, sorted by (principal, key); then
-- accounts, sorted by name, debits of one account in arrival order. Returns
-- one row per debit, in argument order: outcome 0 debited, 1 refused, 2
-- replay of a debit, 3 replay of a refusal, 4 key used by another request,
-- 5 key in flight in this very batch; saldo; and when a replayed key was
-- first settled (ms since the epoch).
CREATE FUNCTION saldos_debit_batch(
    p_batch bigint, p_opening bigint, p_key_ttl_ms bigint,
    p_usuarios text[], p_kinds text[], p_montos bigint[],
    p_principals text[], p_keys text[], p_fingerprints bigint[])
RETURNS TABLE (outcome smallint, saldo bigint, settled_ms bigint)
LANGUAGE plpgsql AS $$
DECLARE
    n          integer  := cardinality(p_usuarios);
    outcomes   smallint[] := array_fill(NULL::smallint, ARRAY[n]);
    saldos     bigint[]   := array_fill(NULL::bigint, ARRAY[n]);
    settled    bigint[]   := array_fill(NULL::bigint, ARRAY[n]);
    applied    integer  := 0;
    audited    integer[] := '{}';   -- positions of applied debits
    audit_saldos bigint[] := '{}';
    settled_keys integer[] := '{}'; -- positions of keys decided in this batch
    i          integer;
    debited    boolean;
    s          bigint;
    seen       record;
BEGIN
    FOR i IN SELECT k FROM generate_subscripts(p_usuarios, 1) k
              WHERE p_keys[k] IS NOT NULL ORDER BY p_principals[k], p_keys[k] LOOP
        INSERT INTO idempotency_keys AS ik (principal, key, fingerprint, created_at, expires_at)
        VALUES (p_principals[i], p_keys[i], p_fingerprints[i], now(),
                now() + p_key_ttl_ms * interval '1 millisecond')
        ON CONFLICT (principal, key) DO UPDATE
           SET fingerprint = EXCLUDED.fingerprint, kind = NULL, usuario = NULL, monto = NULL,
               debited = NULL, saldo = NULL, created_at = EXCLUDED.created_at,
               expires_at = EXCLUDED.expires_at
         WHERE ik.expires_at <= now();
        IF NOT FOUND THEN
            SELECT ik.fingerprint, ik.debited, ik.saldo, ik.created_at INTO seen
              FROM idempotency_keys ik WHERE ik.principal = p_principals[i] AND ik.key = p_keys[i];
            IF seen.fingerprint <> p_fingerprints[i] THEN
                outcomes[i] := 4;
            ELSIF seen.debited IS NULL THEN
                outcomes[i] := 5;
            ELSE
                outcomes[i] := CASE WHEN seen.debited THEN 2 ELSE 3 END;
                saldos[i] := seen.saldo;
                settled[i] := (extract(epoch FROM seen.created_at) * 1000)::bigint;
            END IF;
        END IF;
    END LOOP;

    FOR i IN SELECT k FROM generate_subscripts(p_usuarios, 1) k ORDER BY p_usuarios[k], k LOOP
        CONTINUE WHEN outcomes[i] IS NOT NULL;
        -- One check-and-debit: the conditional update; else the row's balance
        -- (refused); else no row, the opening balance: refused, or the row
        -- created by this first debit. A row created meanwhile by another
        -- transaction decides on the second pass.
        debited := NULL;
        FOR attempt IN 1..2 LOOP
            UPDATE accounts a SET saldo = a.saldo - p_montos[i]
             WHERE a.usuario = p_usuarios[i] AND a.saldo >= p_montos[i]
            RETURNING a.saldo INTO s;
            IF FOUND THEN debited := true; EXIT; END IF;
            SELECT a.saldo INTO s FROM accounts a WHERE a.usuario = p_usuarios[i];
            IF FOUND THEN debited := false; EXIT; END IF;
            IF p_opening < p_montos[i] THEN debited := false; s := p_opening; EXIT; END IF;
            INSERT INTO accounts AS a (usuario, saldo)
            VALUES (p_usuarios[i], p_opening - p_montos[i])
            ON CONFLICT (usuario) DO NOTHING
            RETURNING a.saldo INTO s;
            IF FOUND THEN debited := true; EXIT; END IF;
        END LOOP;
        IF debited IS NULL THEN
            RAISE EXCEPTION 'account % neither found nor created', p_usuarios[i];
        END IF;
        outcomes[i] := CASE WHEN debited THEN 0 ELSE 1 END;
        saldos[i] := s;
        IF debited THEN
            applied := applied + 1;
            audited := audited || i;
            audit_saldos := audit_saldos || s;
        END IF;
        IF p_keys[i] IS NOT NULL THEN
            settled_keys := settled_keys || i;
        END IF;
    END LOOP;

    -- The audit rows and the keys' outcomes, one statement each.
    INSERT INTO debits (batch, seq, usuario, kind, monto, saldo, debited_at, principal,
                        idempotency_key)
    SELECT p_batch, a.seq, p_usuarios[a.seq], p_kinds[a.seq], p_montos[a.seq], a.saldo, now(),
           p_principals[a.seq], p_keys[a.seq]
      FROM unnest(audited, audit_saldos) AS a(seq, saldo);
    UPDATE idempotency_keys ik
       SET kind = p_kinds[k.i], usuario = p_usuarios[k.i], monto = p_montos[k.i],
           debited = (outcomes[k.i] = 0), saldo = saldos[k.i]
      FROM unnest(settled_keys) AS k(i)
     WHERE ik.principal = p_principals[k.i] AND ik.key = p_keys[k.i];

    -- Last, so a fence written meanwhile (same id) makes this batch fail whole.
    INSERT INTO debit_batches (id, debits) VALUES (p_batch, applied);
    RETURN QUERY SELECT outcomes[k], saldos[k], settled[k]
                   FROM generate_subscripts(outcomes, 1) k ORDER BY k;
END $$;
