// API tokens (admin): revoking asks first, and a new token has a copy button. No inline script.
(function () {
  "use strict";

  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute && event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) {
      event.preventDefault();
    }
  });

  document.querySelectorAll("[data-copy]").forEach(function (button) {
    var field = document.getElementById(button.getAttribute("data-copy"));
    var done = button.getAttribute("data-copied");
    button.hidden = false;
    button.addEventListener("click", function () {
      field.select();
      var copied = navigator.clipboard ? navigator.clipboard.writeText(field.value) : Promise.reject();
      copied.catch(function () { document.execCommand("copy"); }).then(function () {
        button.textContent = done;
      });
    });
  });
})();
