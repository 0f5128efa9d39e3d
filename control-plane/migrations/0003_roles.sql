-- Roles of an application: each a set of permission strings. A user's `roles` (users.roles)
-- name them; the union of their permissions is the `scope` of the user's tokens. A role a
-- user holds that is not defined here grants nothing (it still travels in `roles`).
CREATE TABLE roles (
    app_id      uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    name        text NOT NULL,
    permissions text[] NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, name)
);
-- Users holding a role, for revoking them when the role is removed.
CREATE INDEX users_roles ON users USING gin (roles);
