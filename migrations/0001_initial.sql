-- The schema for the whole product (SPEC §2, §4, §5, §6). Later migrations add to it.
-- Secrets are never stored: keys and admin tokens keep an argon2id hash of their secret only.

CREATE TABLE accounts (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A member belongs to one account with one role; its admin token is hashed like a key.
CREATE TABLE members (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id        uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    email             text NOT NULL,
    name              text NOT NULL DEFAULT '',
    role              text NOT NULL CHECK (role IN ('owner', 'admin', 'readonly')),
    token_public_id   text NOT NULL UNIQUE,
    token_hash        text NOT NULL,
    token_created_at  timestamptz NOT NULL DEFAULT now(),
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX members_account_email ON members (account_id, lower(email));

CREATE TABLE api_keys (
    id                          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id                  uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    -- The indexed lookup: the public id embedded in every key.
    public_id                   text NOT NULL UNIQUE,
    name                        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    -- prefix + public id + '…' + last 4 characters: identifies the key, never usable.
    partial_key                 text NOT NULL,
    secret_hash                 text,  -- NULL once deleted
    secret_created_at           timestamptz NOT NULL DEFAULT now(),
    -- Regenerate with grace_seconds keeps the old secret valid until then.
    previous_secret_hash        text,
    previous_secret_expires_at  timestamptz,
    scopes                      text[] NOT NULL DEFAULT '{reports,customers,data,account}',
    ip_allowlist                cidr[] NOT NULL DEFAULT '{}',
    rate_limit_per_minute       integer CHECK (rate_limit_per_minute > 0),
    rate_limit_per_day          integer CHECK (rate_limit_per_day > 0),
    expires_at                  timestamptz,
    enabled                     boolean NOT NULL DEFAULT true,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    created_by                  uuid REFERENCES members (id) ON DELETE SET NULL,
    regenerated_at              timestamptz,
    last_used_at                timestamptz,
    -- Delete is permanent: the row stays (for usage history and the audit trail) with
    -- its hash removed, and no query of the gateway or the admin API returns it again.
    deleted_at                  timestamptz,
    CHECK ((deleted_at IS NULL) = (secret_hash IS NOT NULL))
);
CREATE INDEX api_keys_account_listing ON api_keys (account_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;

-- Every change to a key that can change an authentication decision tells every gateway
-- process, in the same transaction. Last-used flushes touch only last_used_at and must
-- not empty the caches every few seconds, hence the WHEN clause.
CREATE FUNCTION notify_api_key_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gateway_api_keys', OLD.public_id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER api_keys_changed
    AFTER UPDATE ON api_keys
    FOR EACH ROW
    WHEN ((to_jsonb(OLD) - 'last_used_at') IS DISTINCT FROM (to_jsonb(NEW) - 'last_used_at'))
    EXECUTE FUNCTION notify_api_key_changed();

CREATE TRIGGER api_keys_deleted
    AFTER DELETE ON api_keys
    FOR EACH ROW
    EXECUTE FUNCTION notify_api_key_changed();

-- The same for admin tokens and roles, so that cached admin sessions follow changes.
CREATE FUNCTION notify_member_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gateway_members', OLD.token_public_id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER members_changed
    AFTER UPDATE OR DELETE ON members
    FOR EACH ROW
    EXECUTE FUNCTION notify_member_changed();

-- Requests per key per hour by outcome (SPEC §5), written in batches by the gateways.
CREATE TABLE key_usage_hourly (
    key_id   uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    hour     timestamptz NOT NULL,
    outcome  text NOT NULL CHECK (outcome IN
        ('ok', 'upstream_4xx', 'upstream_5xx', 'rate_limited', 'denied', 'failed_auth')),
    count    bigint NOT NULL CHECK (count >= 0),
    PRIMARY KEY (key_id, hour, outcome)
);

-- Rate-limit counters shared by every gateway process (SPEC §4): one row per key, window
-- and window start; each process adds its local counts in one batched statement.
CREATE TABLE rate_limit_counters (
    key_id        uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    window_name   text NOT NULL CHECK (window_name IN ('minute', 'day')),
    window_start  timestamptz NOT NULL,
    count         bigint NOT NULL CHECK (count >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, window_name, window_start)
);
CREATE INDEX rate_limit_counters_window_start ON rate_limit_counters (window_start);

-- Who changed what (SPEC §6). Kept when keys or members are deleted.
CREATE TABLE audit_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id   uuid REFERENCES accounts (id) ON DELETE CASCADE,
    at           timestamptz NOT NULL DEFAULT now(),
    actor_type   text NOT NULL CHECK (actor_type IN ('member', 'operator', 'system')),
    actor_id     uuid,
    action       text NOT NULL,
    target_type  text NOT NULL,
    target_id    uuid,
    client_ip    inet,
    user_agent   text,
    details      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_account_newest ON audit_log (account_id, id DESC);
