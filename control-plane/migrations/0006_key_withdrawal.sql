-- Emergency rotation (API.md §3 "Operator"): a key withdrawn at once leaves the published
-- set before its tokens expire; `withdrawn` keeps it apart from a key removed on schedule.
ALTER TABLE signing_keys DROP CONSTRAINT signing_keys_state_check;
ALTER TABLE signing_keys ADD CONSTRAINT signing_keys_state_check
    CHECK (state IN ('next', 'active', 'retired', 'removed', 'withdrawn'));
