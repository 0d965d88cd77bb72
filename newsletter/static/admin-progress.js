// Live progress of a send (admin): polls the JSON endpoint every second and updates the page
// in place. No framework; the page works without it (reload to refresh).
(function () {
  "use strict";

  // A confirmation for dangerous buttons (cancel): forms with data-confirm.
  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute && event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) {
      event.preventDefault();
    }
  });

  var root = document.getElementById("send-progress");
  if (!root) {
    return;
  }
  var url = root.getAttribute("data-progress-url");
  var bar = document.getElementById("send-bar");
  var FINAL = { done: true, cancelled: true };
  var timer = null;

  function render(progress) {
    root.querySelectorAll("[data-field]").forEach(function (el) {
      var name = el.getAttribute("data-field");
      // A number is shown as the server formatted it for the page's language ("1 234", "63,8 %").
      var value = (name + "_text") in progress ? progress[name + "_text"] : progress[name];
      if (value !== undefined && el.textContent !== String(value)) {
        el.textContent = value;
      }
    });
    bar.value = progress.percent;
    bar.textContent = progress.percent_text;
    bar.setAttribute("aria-valuetext", progress.percent_text);
    root.setAttribute("data-status", progress.status);
    root.querySelectorAll("[data-show-when]").forEach(function (element) {
      var states = element.getAttribute("data-show-when").split(" ");
      element.hidden = states.indexOf(progress.status) === -1;
    });
  }

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (progress) {
        render(progress);
        // A finished send stops polling; a paused one keeps polling (another admin may resume it).
        timer = FINAL[progress.status] ? null : window.setTimeout(poll, 1000);
      })
      .catch(function () {
        timer = window.setTimeout(poll, 5000); // the server restarts, or the session ended
      });
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && timer === null && !FINAL[root.getAttribute("data-status")]) {
      poll();
    }
  });
  poll();
})();
