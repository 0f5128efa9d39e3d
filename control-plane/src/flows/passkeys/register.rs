//! A signed-in user adds a passkey: begin (after a recent sign-in or a proof, as for any
//! factor), then finish with the authenticator's answer.

use serde_json::json;
use uuid::Uuid;
use webauthn_rs::prelude::{PasskeyRegistration, RegisterPublicKeyCredential};

use super::{Options, PasskeyError, relying_party, to_json};
use crate::domain::Ctx;
use crate::domain::apps::App;
use crate::domain::audit::{self, Event};
use crate::domain::passkeys::{self, CEREMONY_SECS, Ceremony, PasskeyView};
use crate::domain::users::User;
use crate::flows::mfa::Deps;
use crate::flows::mfa::proof::{Proof, recent_or_proof_in};
use crate::infra::crypto::digest;

/// Opens a registration for `user` (signed in as `session`): the creation options, with
/// the user's passkeys excluded so one authenticator is not registered twice.
pub async fn begin(
    deps: Deps<'_>,
    app: &App,
    user: &User,
    session: Uuid,
    proof: &Proof,
    ctx: &Ctx,
) -> Result<Options, PasskeyError> {
    let (rp, _) = relying_party(app)?;
    let mut client = deps.pool.get().await?;
    let tx = client.transaction().await?;
    recent_or_proof_in(&tx, deps, app, user, session, proof, ctx).await?;
    let handle = passkeys::handle_in(&tx, user.id).await?;
    let exclude = passkeys::of_user(&tx, user.id)
        .await?
        .iter()
        .map(|p| p.passkey.cred_id().clone())
        .collect();
    let name = user
        .email
        .as_deref()
        .or(user.username.as_deref())
        .unwrap_or("user");
    let shown = user.display_name.as_deref().unwrap_or(name);
    let (mut options, state) = rp
        .start_passkey_registration(handle, name, shown, Some(exclude))
        .map_err(|e| PasskeyError::Invalid(format!("a registration cannot begin: {e}")))?;
    // A passkey is a discoverable credential: the authenticator keeps it, so a sign-in
    // without a username finds it.
    if let Some(selection) = options.public_key.authenticator_selection.as_mut() {
        selection.resident_key = Some(webauthn_rs_proto::ResidentKeyRequirement::Required);
        selection.require_resident_key = true;
    }
    let id = passkeys::begin(
        &tx,
        app.id,
        Some(user.id),
        Ceremony::Register,
        &to_json(&state)?,
        ctx.now,
    )
    .await?;
    tx.commit().await?;
    Ok(Options {
        ceremony_id: id,
        options: to_json(&options)?,
        expires_in: CEREMONY_SECS,
    })
}

/// A passkey's name: 1..=100 characters, no control characters; none given: "Passkey".
fn check_name(name: Option<&str>) -> Result<String, PasskeyError> {
    let name = name.map_or("Passkey", str::trim);
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(PasskeyError::Invalid(
            "name must be 1 to 100 characters".into(),
        ));
    }
    Ok(name.to_owned())
}

/// Finishes `user`'s registration `ceremony_id` with the authenticator's answer and stores
/// the passkey.
pub async fn finish(
    deps: Deps<'_>,
    app: &App,
    user: &User,
    ceremony_id: &str,
    credential: &RegisterPublicKeyCredential,
    name: Option<&str>,
    ctx: &Ctx,
) -> Result<PasskeyView, PasskeyError> {
    let (rp, settings) = relying_party(app)?;
    let name = check_name(name)?;
    let mut client = deps.pool.get().await?;
    let begun = passkeys::finish(
        &client,
        &digest(ceremony_id),
        app.id,
        Ceremony::Register,
        ctx.now,
    )
    .await?
    .filter(|b| b.user == Some(user.id))
    .ok_or(PasskeyError::Ceremony)?;
    let state: PasskeyRegistration =
        serde_json::from_value(begun.state).map_err(|_| PasskeyError::Ceremony)?;
    let passkey = rp
        .finish_passkey_registration(credential, &state)
        .map_err(|e| {
            PasskeyError::Invalid(format!("the authenticator's answer was refused: {e}"))
        })?;
    let aaguid = aaguid_of(credential);
    if !settings.aaguids.is_empty() && !aaguid.is_some_and(|a| settings.aaguids.contains(&a)) {
        return Err(PasskeyError::Invalid(
            "this authenticator model is not allowed by the application".into(),
        ));
    }
    let tx = client.transaction().await?;
    let stored = passkeys::insert_in(&tx, app.id, user.id, &name, &passkey, aaguid)
        .await?
        .ok_or_else(|| PasskeyError::Invalid("this passkey is already registered".into()))?;
    let details = json!({ "passkey_id": stored.id, "aaguid": aaguid });
    let event = Event::by_user(app.id, user.id, "passkey.registered", details, ctx);
    audit::record(&tx, event).await?;
    tx.commit().await?;
    Ok(stored.view())
}

/// The authenticator model the registration declared (none: absent or all zeros).
///
/// Read by hand because the library keeps it only for attested registrations: the
/// attestation object is CBOR whose `authData` is rpIdHash (32 bytes), flags (1),
/// signCount (4), then the attested credential data, which starts with the AAGUID (16)
/// (WebAuthn §6.1, §6.5.1). The library has already checked the object by now.
fn aaguid_of(credential: &RegisterPublicKeyCredential) -> Option<Uuid> {
    use serde_cbor_2::Value;
    let object: Value =
        serde_cbor_2::from_slice(credential.response.attestation_object.as_ref()).ok()?;
    let Value::Map(map) = object else {
        return None;
    };
    let Some(Value::Bytes(data)) = map.get(&Value::Text("authData".into())) else {
        return None;
    };
    let aaguid = Uuid::from_slice(data.get(37..53)?).ok()?;
    (!aaguid.is_nil()).then_some(aaguid)
}
