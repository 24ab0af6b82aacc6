-- saldos schema, version 4: movements and events (SPEC section 9) from the
-- audit trail. Written so that it can run again after an interruption: the
-- runner records the version only after the indexes of schema.rs are built
-- (and the one they replace dropped), concurrently.
--
-- Every audit row written from now on carries feed_xid, the id of the
-- transaction that wrote it; an event's id is (feed_xid << 16) | seq. Rows
-- written before (feed_xid NULL) stay in the audit trail and are in neither
-- the history nor the feed. Both columns are added nullable without a
-- default: no table rewrite, the ACCESS EXCLUSIVE lock is held for a moment;
-- lock_timeout keeps a long transaction from queueing every debit behind
-- this one (the migration fails instead, and is run again).
SET LOCAL lock_timeout = '5s';

ALTER TABLE debits ADD COLUMN IF NOT EXISTS feed_xid bigint;

-- The id of the last transaction that debited the account: a transaction
-- with a smaller id may no longer debit it (see the batch function).
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS last_xid bigint;

-- Named consumers' positions in the feed (PUT /eventos/cursores/{nombre}).
CREATE TABLE IF NOT EXISTS event_consumers (
    nombre     text        PRIMARY KEY,
    position   bigint      NOT NULL,
    updated_at timestamptz NOT NULL
);

-- Where the feed starts: every transaction with a smaller id had ended
-- before this one took its snapshot, so none of them can call the function
-- below: every feed_xid is at least this. A page from the start begins its
-- scan here, not at 0 (the feed's index is a BRIN, which finds no minimum).
-- A run again after an interruption keeps the first run's value.
CREATE TABLE IF NOT EXISTS saldos_feed (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    start_xid bigint  NOT NULL
);
INSERT INTO saldos_feed (start_xid)
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint
ON CONFLICT (singleton) DO NOTHING;

-- The feed's index (a BRIN, built after this transaction) reads every page
-- of a block range not summarized yet; autovacuum summarizes a range only at
-- its next visit, up to a minute or more later, and a reader at the head of
-- the feed would read that whole minute of rows on every page. The service
-- calls this about once a second instead (feed.rs), as the application
-- role, which may not summarize an index it does not own. Only full ranges,
-- the last 64 of them (far more than a second of debits): the range being
-- filled stays unsummarized, so inserting into it updates no summary.
-- Skipped, never waited for, while
-- autovacuum or another instance holds the lock that summarizing takes.
CREATE OR REPLACE FUNCTION saldos_feed_summarize() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    feed       regclass := 'public.debits_feed'::regclass;
    per_range  bigint;
    blocks     bigint;
    last_full  bigint;  -- the first block of the last full range
    summarized integer := 0;
    first      bigint;
BEGIN
    BEGIN
        LOCK TABLE public.debits IN SHARE UPDATE EXCLUSIVE MODE NOWAIT;
    EXCEPTION WHEN lock_not_available THEN
        RETURN 0;
    END;
    SELECT coalesce(max(o.option_value::bigint), 128) INTO per_range
      FROM pg_class c, pg_options_to_table(c.reloptions) o
     WHERE c.oid = feed AND o.option_name = 'pages_per_range';
    blocks := pg_relation_size('public.debits'::regclass)
              / current_setting('block_size')::bigint;
    last_full := (blocks / per_range - 1) * per_range;
    FOR first IN SELECT generate_series(greatest(last_full - 63 * per_range, 0), last_full,
                                        per_range) LOOP
        summarized := summarized + brin_summarize_range(feed, first);
    END LOOP;
    RETURN summarized;
END $$;
REVOKE ALL ON FUNCTION saldos_feed_summarize() FROM PUBLIC;

-- Version 1's batch function: no release calls it since version 2's.
DROP FUNCTION IF EXISTS saldos_debit_batch(bigint, bigint, bigint, text[], text[], bigint[],
                                           text[], text[], bigint[]);

-- Version 2's batch function, replaced in place (same signature, same
-- outcomes), so that instances of the previous release write feed rows too
-- during a rolling deploy. What changed: every audit row gets feed_xid; an
-- account whose last_xid is above this transaction's id is blocked (outcome
-- 6). No notification: the instance announces its commits afterwards, on
-- another connection (feed.rs: a NOTIFY here would hold the cluster-wide
-- notification lock through the commit's flush). Its outcomes and
-- statements are otherwise those of 0002_debit_batch_v2.sql.
--
-- The feed's two indexes are built after this transaction, concurrently
-- (schema.rs: a long build must not stop debits), and version 1's index of
-- accounts' debits, which the history's replaces, is dropped.
CREATE OR REPLACE FUNCTION saldos_debit_batch_v2(
    p_batch bigint, p_opening bigint, p_key_ttl_ms bigint, p_lock_wait_ms bigint,
    p_usuarios text[], p_kinds text[], p_montos bigint[],
    p_principals text[], p_keys text[], p_fingerprints bigint[])
RETURNS TABLE (outcome smallint, saldo bigint, settled_ms bigint)
LANGUAGE plpgsql AS $$
DECLARE
    n            integer    := cardinality(p_usuarios);
    outcomes     smallint[] := array_fill(NULL::smallint, ARRAY[n]);
    saldos       bigint[]   := array_fill(NULL::bigint, ARRAY[n]);
    settled      bigint[]   := array_fill(NULL::bigint, ARRAY[n]);
    claimed      integer[] := '{}';  -- positions whose key this batch claimed
    seen_at      integer[];  -- positions whose key was already there
    seen_fp      bigint[];
    seen_debited boolean[];
    seen_saldo   bigint[];
    seen_created bigint[];
    pending      integer[];  -- positions to debit, sorted by account then arrival
    names        text[];     -- locked accounts, sorted as pending
    balances     bigint[];
    touched      boolean[]; -- per locked account: a debit of it applied
    last_xids    bigint[];  -- per locked account: the last transaction that debited it
    my_xid       bigint;    -- this transaction's id: the feed position of its debits
    audited      integer[] := '{}';
    audit_saldos bigint[] := '{}';
    blocked_keys integer[] := '{}';
    keyed        boolean;
    accounts_of  text[];     -- the distinct accounts of pending
    missing      text[];     -- those without a locked row
    applied      integer := 0;
    a            integer := 1;  -- cursor in names
    i            integer;
    j            integer;
    balance      bigint;
BEGIN
    PERFORM set_config('lock_timeout', greatest(p_lock_wait_ms, 1) || 'ms', true);
    keyed := cardinality(array_remove(p_keys, NULL)) > 0;

    -- Keys: claim the new and the expired in one statement, in one global
    -- order (no deadlock between batches); a key twice in this batch keeps
    -- its first position, the later ones are in flight.
    IF keyed THEN
    WITH wanted AS (
        SELECT DISTINCT ON (p_principals[k], p_keys[k]) k AS i
          FROM generate_subscripts(p_usuarios, 1) k
         WHERE p_keys[k] IS NOT NULL
         ORDER BY p_principals[k], p_keys[k], k),
    inserted AS (
        INSERT INTO idempotency_keys AS ik (principal, key, fingerprint, created_at, expires_at)
        SELECT p_principals[w.i], p_keys[w.i], p_fingerprints[w.i], now(),
               now() + p_key_ttl_ms * interval '1 millisecond'
          FROM wanted w ORDER BY p_principals[w.i], p_keys[w.i]
        ON CONFLICT (principal, key) DO UPDATE
           SET fingerprint = EXCLUDED.fingerprint, kind = NULL, usuario = NULL, monto = NULL,
               debited = NULL, saldo = NULL, created_at = EXCLUDED.created_at,
               expires_at = EXCLUDED.expires_at
         WHERE ik.expires_at <= now()
        RETURNING ik.principal, ik.key)
    SELECT coalesce(array_agg(w.i), '{}') INTO claimed
      FROM wanted w JOIN inserted s ON s.principal = p_principals[w.i] AND s.key = p_keys[w.i];

    SELECT coalesce(array_agg(k ORDER BY k), '{}'), array_agg(ik.fingerprint ORDER BY k),
           array_agg(ik.debited ORDER BY k), array_agg(ik.saldo ORDER BY k),
           array_agg((extract(epoch FROM ik.created_at) * 1000)::bigint ORDER BY k)
      INTO seen_at, seen_fp, seen_debited, seen_saldo, seen_created
      FROM generate_subscripts(p_usuarios, 1) k
      JOIN idempotency_keys ik ON ik.principal = p_principals[k] AND ik.key = p_keys[k]
     WHERE p_keys[k] IS NOT NULL AND k <> ALL (claimed);
    FOR j IN 1 .. cardinality(seen_at) LOOP
        i := seen_at[j];
        IF seen_fp[j] <> p_fingerprints[i] THEN
            outcomes[i] := 4;
        ELSIF seen_debited[j] IS NULL THEN
            outcomes[i] := 5;
        ELSE
            outcomes[i] := CASE WHEN seen_debited[j] THEN 2 ELSE 3 END;
            saldos[i] := seen_saldo[j];
            settled[i] := seen_created[j];
        END IF;
    END LOOP;
    END IF;

    SELECT coalesce(array_agg(k ORDER BY p_usuarios[k], k), '{}'),
           coalesce(array_agg(DISTINCT p_usuarios[k]), '{}')
      INTO pending, accounts_of
      FROM generate_subscripts(p_usuarios, 1) k WHERE outcomes[k] IS NULL;

    -- One locking read of every account, sorted as pending; a row another
    -- transaction holds is skipped: its debits are blocked, not waited for.
    SELECT coalesce(array_agg(x.usuario ORDER BY x.usuario), '{}'),
           array_agg(x.saldo ORDER BY x.usuario), array_agg(x.last_xid ORDER BY x.usuario)
      INTO names, balances, last_xids
      FROM (SELECT ac.usuario, ac.saldo, ac.last_xid FROM accounts ac
             WHERE ac.usuario = ANY (accounts_of)
             ORDER BY ac.usuario FOR UPDATE SKIP LOCKED) x;

    -- An account without a row has the opening balance. Its row is created
    -- when one of its debits could apply, and locked by the same read again,
    -- so that every debit is decided on a row this batch holds; one whose
    -- every debit exceeds the opening balance is refused at it (balances
    -- only fall: no row is the highest balance there is).
    IF cardinality(names) < cardinality(accounts_of) THEN
        INSERT INTO accounts (usuario, saldo)
        SELECT f.u, p_opening
          FROM (SELECT p_usuarios[k] AS u, min(p_montos[k]) AS m
                  FROM unnest(pending) k GROUP BY 1) f
         WHERE f.m <= p_opening
         ORDER BY f.u
        ON CONFLICT (usuario) DO NOTHING;
        SELECT coalesce(array_agg(x.usuario ORDER BY x.usuario), '{}'),
               array_agg(x.saldo ORDER BY x.usuario), array_agg(x.last_xid ORDER BY x.usuario)
          INTO names, balances, last_xids
          FROM (SELECT ac.usuario, ac.saldo, ac.last_xid FROM accounts ac
                 WHERE ac.usuario = ANY (accounts_of)
                 ORDER BY ac.usuario FOR UPDATE SKIP LOCKED) x;
    END IF;

    -- Taken after the rows are locked (locking assigned it already, unless
    -- no row was): the feed orders debits by it, so of two transactions
    -- debiting one account the later must have the larger id. An id is
    -- assigned at a transaction's first write, possibly before another
    -- transaction, with a larger id, debits the account and commits: such a
    -- row (last_xid above ours) is blocked, and its debits are sent again in
    -- a new transaction, whose id is larger.
    my_xid := pg_current_xact_id()::text::bigint;

    touched := array_fill(false, ARRAY[cardinality(names)]);

    -- Both lists are sorted by account name in the same collation: one walk.
    FOREACH i IN ARRAY pending LOOP
        WHILE a <= cardinality(names) AND names[a] < p_usuarios[i] LOOP
            a := a + 1;
        END LOOP;
        IF a <= cardinality(names) AND names[a] = p_usuarios[i]
           AND coalesce(last_xids[a], 0) < my_xid THEN
            balance := balances[a];
            IF balance >= p_montos[i] THEN
                balance := balance - p_montos[i];
                balances[a] := balance;
                touched[a] := true;
                outcomes[i] := 0;
                applied := applied + 1;
                audited := audited || i;
                audit_saldos := audit_saldos || balance;
            ELSE
                outcomes[i] := 1;
            END IF;
            saldos[i] := balance;
        ELSIF (a > cardinality(names) OR names[a] <> p_usuarios[i])
              AND p_montos[i] > p_opening AND NOT EXISTS (
                  SELECT 1 FROM accounts ac WHERE ac.usuario = p_usuarios[i]) THEN
            outcomes[i] := 1;
            saldos[i] := p_opening;
        ELSE
            outcomes[i] := 6;
            IF i = ANY (claimed) THEN
                blocked_keys := blocked_keys || i;
            END IF;
        END IF;
    END LOOP;

    -- The new balances, one write per account.
    UPDATE accounts ac SET saldo = c.saldo, last_xid = my_xid
      FROM unnest(names, balances, touched) AS c(usuario, saldo, touched)
     WHERE c.touched AND ac.usuario = c.usuario;

    -- seq is the debit's place in the batch: an account's debits were
    -- applied in that order, so (feed_xid, seq) is its balance order.
    INSERT INTO debits (batch, seq, usuario, kind, monto, saldo, debited_at, principal,
                        idempotency_key, feed_xid)
    SELECT p_batch, d.seq, p_usuarios[d.seq], p_kinds[d.seq], p_montos[d.seq], d.saldo, now(),
           p_principals[d.seq], p_keys[d.seq], my_xid
      FROM unnest(audited, audit_saldos) AS d(seq, saldo);

    -- Keys: the decided remember their outcome; a blocked debit's claim is
    -- withdrawn, so its retry is not taken for a request in flight.
    IF keyed THEN
    UPDATE idempotency_keys ik
       SET kind = p_kinds[s.i], usuario = p_usuarios[s.i], monto = p_montos[s.i],
           debited = (outcomes[s.i] = 0), saldo = saldos[s.i]
      FROM unnest(claimed) AS s(i)
     WHERE outcomes[s.i] IN (0, 1) AND ik.principal = p_principals[s.i] AND ik.key = p_keys[s.i];
    DELETE FROM idempotency_keys ik
     USING unnest(blocked_keys) AS b(i)
     WHERE ik.principal = p_principals[b.i] AND ik.key = p_keys[b.i];
    END IF;

    -- Last, so a fence written meanwhile (same id) makes this batch fail whole.
    INSERT INTO debit_batches (id, debits) VALUES (p_batch, applied);
    RETURN QUERY SELECT outcomes[k], saldos[k], settled[k]
                   FROM generate_subscripts(outcomes, 1) k ORDER BY k;
END $$;
