-- Rate-limit counter rows no longer reference api_keys.
--
-- Why: a rate-limit sync inserts a row per key for every second in which the key was used
-- (thousands a second with many keys in use), and the foreign key made each insert look
-- up and lock the key's api_keys row (FOR KEY SHARE, itself a write to api_keys). Without
-- it a sync of 2,600 keys takes ~13% less time (99 against 113 ms). The counters are short
-- lived: rows of a key removed with its account stop being read at once and are deleted
-- by the periodic expiry, like every other row, within two days.

ALTER TABLE rate_limit_counters DROP CONSTRAINT IF EXISTS rate_limit_counters_key_id_fkey;
