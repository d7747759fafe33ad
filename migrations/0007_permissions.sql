-- Keys carry permissions from the operator's route table (`routes:` in config.yaml)
-- instead of the four fixed scopes. Each scope becomes the permissions of the default
-- table that cover what it used to: `data` covered reading and pushing data alike.
-- The column keeps its place (the NOTIFY trigger on it follows the rename); it has no
-- default any more: a key is always created with an explicit list.
ALTER TABLE api_keys RENAME COLUMN scopes TO permissions;
ALTER TABLE api_keys ALTER COLUMN permissions DROP DEFAULT;

UPDATE api_keys
SET permissions = ARRAY(
    SELECT DISTINCT m.permission
    FROM unnest(api_keys.permissions) AS s (scope)
    JOIN (VALUES ('reports', 'reports:read'),
                 ('customers', 'customers:read'),
                 ('data', 'data:read'),
                 ('data', 'data:write'),
                 ('account', 'account:read')) AS m (scope, permission)
        USING (scope)
    ORDER BY 1
);
