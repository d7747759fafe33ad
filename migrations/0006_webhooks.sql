-- Webhooks (SPEC §10): endpoints per account, the transactional outbox of events, one
-- delivery row per event and endpoint (its log: status, attempts, last answer), and the
-- notices that make key.expiring / key.rotation_due / key.limit_reached fire once.

CREATE TABLE webhook_endpoints (
    id                          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id                  uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    url                         text NOT NULL CHECK (length(url) <= 2048),
    events                      text[] NOT NULL,
    enabled                     boolean NOT NULL DEFAULT true,
    -- The signing secret: HMAC needs it as it is, so it is stored (not hashed), shown by
    -- the API once, never logged, never in a payload. After a rotation with a grace
    -- period the previous one signs too until it expires.
    secret                      text NOT NULL,
    previous_secret             text,
    previous_secret_expires_at  timestamptz,
    secret_created_at           timestamptz NOT NULL DEFAULT now(),
    created_at                  timestamptz NOT NULL DEFAULT now(),
    created_by                  uuid REFERENCES members (id) ON DELETE SET NULL
);
CREATE INDEX webhook_endpoints_account ON webhook_endpoints (account_id, created_at, id);

-- The outbox: written in the transaction of the change it describes. `payload` is the
-- exact body every attempt sends (and signs).
CREATE TABLE webhook_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    msg_id      text NOT NULL UNIQUE,
    account_id  uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    type        text NOT NULL,
    subject     text NOT NULL,
    payload     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id         bigint NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    -- Deliveries of one subject (a key, a member) to one endpoint go out in id order.
    subject          text NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_attempt_at  timestamptz,
    delivered_at     timestamptz,
    response_status  integer,
    response_body    text CHECK (octet_length(response_body) <= 1024),
    last_error       text,
    latency_ms       double precision
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at, id)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_subject ON webhook_deliveries (endpoint_id, subject, id)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (endpoint_id, id DESC);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);

-- One row per notice already queued: (key, kind, marker) where the marker is what
-- re-arms it (the expiry, the secret's creation, the limit window's start).
CREATE TABLE webhook_key_notices (
    key_id      uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    kind        text NOT NULL,
    marker      bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, kind, marker)
);
