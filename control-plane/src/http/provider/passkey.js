// The OpenID Provider's sign-in page (served as /v1/provider-passkey.js; the page's CSP
// allows only this script and requests to its own origin): "Sign in with a passkey" runs
// the ceremony begun at the application's passkey routes, then posts the answer with the
// page's form, which carries the authorization request and the CSRF token.
"use strict";

for (const form of document.querySelectorAll("form")) {
  const action = form.querySelector("input[name=action]");
  if (!action || action.value !== "passkey") continue;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    // The form posts to /v1/apps/{app}/oauth2/authorize.
    const app = form.getAttribute("action").split("/")[3];
    try {
      const begun = await fetch(`/v1/apps/${app}/passkeys/login/begin`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: "{}",
      }).then((r) => r.json());
      const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(begun.options.publicKey);
      const credential = await navigator.credentials.get({ publicKey });
      form.querySelector("input[name=ceremony_id]").value = begun.ceremony_id;
      form.querySelector("input[name=credential]").value = JSON.stringify(credential.toJSON());
      form.submit();
    } catch (e) {
      form.querySelector("button").textContent = `No passkey sign-in (${e.name}): try again`;
    }
  });
}
document.body.dataset.ready = "true";
