-- The sequence numbers of the signed key sets (`portcullis:jwks:signed`): they only grow,
-- across replicas, so a verifier refuses an older set replayed into Redis.
CREATE SEQUENCE signed_jwks_seq;
