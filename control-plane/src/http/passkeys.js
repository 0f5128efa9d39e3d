// The passkey page's ceremony (served as /v1/passkeys.js; the page's CSP allows only this
// script and requests to its own origin). Applications that run the ceremony themselves
// can do the same: the README shows the two calls.
"use strict";

const app = document.body.dataset.app;
const base = `/v1/apps/${app}`;
let session = null;

// The server's options and the browser's credentials cross as JSON (binary members
// base64url), through the browser's own conversions (WebAuthn Level 3).
const creationOptions = (options) => ({
  publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(options.publicKey),
});
const requestOptions = (options) => ({
  publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(options.publicKey),
});
const credentialJson = (credential) => credential.toJSON();

async function call(path, body, token) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(base + path, {
    method: "POST",
    headers,
    body: JSON.stringify(body),
  });
  const json = await response.json().catch(() => ({}));
  if (!response.ok) throw Object.assign(new Error(json.detail || response.statusText), { json });
  return json;
}

function show(result) {
  if (result.access_token) session = result;
  document.getElementById("result").textContent = JSON.stringify(result);
}

function value(id) {
  return document.getElementById(id).value.trim();
}

async function signInWithPasskey(login) {
  const begun = await call("/passkeys/login/begin", login ? { email: login } : {});
  const credential = await navigator.credentials.get(requestOptions(begun.options));
  return call("/passkeys/login/finish", {
    ceremony_id: begun.ceremony_id,
    credential: credentialJson(credential),
  });
}

async function signInWithPassword() {
  const answer = await call("/login", { email: value("login"), password: value("password") });
  if (!answer.mfa_required) return answer;
  if (!answer.methods.includes("webauthn")) return answer;
  const options = await call("/login/mfa/webauthn", { mfa_token: answer.mfa_token });
  const credential = await navigator.credentials.get(requestOptions(options));
  return call("/login/mfa", {
    mfa_token: answer.mfa_token,
    method: "webauthn",
    credential: credentialJson(credential),
  });
}

async function addPasskey() {
  if (!session) throw new Error("sign in first");
  const token = session.access_token;
  const begun = await call("/passkeys/register/begin", {}, token);
  const credential = await navigator.credentials.create(creationOptions(begun.options));
  return call(
    "/passkeys/register/finish",
    { ceremony_id: begun.ceremony_id, credential: credentialJson(credential), name: value("name") || undefined },
    token,
  );
}

function on(id, action) {
  document.getElementById(id).addEventListener("click", async (event) => {
    event.preventDefault();
    try {
      show(await action());
    } catch (e) {
      show({ error: e.name === "Error" ? e.message : `${e.name}: ${e.message}`, problem: e.json });
    }
  });
}

on("passkey-signin", () => signInWithPasskey(null));
on("passkey-named", () => signInWithPasskey(value("login")));
on("password-signin", signInWithPassword);
on("passkey-add", addPasskey);
document.body.dataset.ready = "true";
