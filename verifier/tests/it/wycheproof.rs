//! Wycheproof's Ed25519 vectors through the exact key type the core verifies with.

use portcullis_common::jwk::Jwk;
use portcullis_verifier::core::{KeySet, Trust};
use wycheproof::TestResult;
use wycheproof::eddsa::{TestName, TestSet};

#[test]
fn wycheproof_ed25519() {
    let set = TestSet::load(TestName::Ed25519).unwrap();
    let mut checked = 0;
    for group in set.test_groups {
        let pk: [u8; 32] = group.key.pk.as_ref().try_into().unwrap();
        let jwk = Jwk::ed25519(&pk);
        let jwks = serde_json::json!({ "keys": [jwk] }).to_string();
        let keys = KeySet::from_jwks(jwks.as_bytes(), Trust::Portcullis);
        for test in group.tests {
            let accepted = keys
                .as_ref()
                .ok()
                .and_then(|k| k.by_kid(jwk.kid.as_deref().unwrap()))
                .is_some_and(|key| key.verify(&test.msg, &test.sig));
            match test.result {
                TestResult::Valid => assert!(
                    accepted,
                    "valid vector {} refused: {}",
                    test.tc_id, test.comment
                ),
                TestResult::Invalid => assert!(
                    !accepted,
                    "invalid vector {} accepted: {}",
                    test.tc_id, test.comment
                ),
                TestResult::Acceptable => {}
            }
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} vectors");
}
