// Approve or reject through the API, with the page's CSRF token; then show the outcome.
(function () {
  "use strict";
  const form = document.getElementById("approval-form");
  const error = document.getElementById("approval-error");
  const id = document.getElementById("approval").dataset.action;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const decision = event.submitter ? event.submitter.value : "approve";
    const token = form.querySelector("input[name=csrfmiddlewaretoken]").value;
    const reason = form.querySelector("input[name=reason]").value;
    form.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    let response;
    try {
      response = await fetch("/api/v1/remediation-actions/" + id + "/" + decision, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": token },
        body: JSON.stringify(reason ? { reason: reason } : {}),
      });
    } catch (failure) {
      response = null;
    }
    if (response && response.ok) {
      location.reload();
      return;
    }
    let detail = "The console could not be reached.";
    if (response) {
      const problem = await response.json().catch(() => ({}));
      detail = problem.detail || problem.title || "Refused (" + response.status + ").";
    }
    error.textContent = detail;
    error.hidden = false;
    form.querySelectorAll("button").forEach((b) => { b.disabled = false; });
  });
})();
