-- Leaked keys (SPEC §10): when a key is reported leaked (GitHub secret scanning), the key
-- keeps when and where, for the admin API and the page. The notify trigger does not list
-- these columns: what changes an authentication decision (enabled, deleted_at) does.

ALTER TABLE api_keys
    ADD COLUMN leaked_at timestamptz,
    ADD COLUMN leak_url text CHECK (length(leak_url) <= 2048);
