// Behaviour every page shares.
(function () {
  "use strict";
  // Identities revealed under earlier releases were kept in sessionStorage, where they outlived
  // the user who asked; drop any still there (names now live in the chart page's memory only).
  try {
    Object.keys(sessionStorage)
      .filter(function (key) { return key.indexOf("perfuse.name.") === 0; })
      .forEach(function (key) { sessionStorage.removeItem(key); });
  } catch (err) {
    // Storage disabled: nothing is kept there either.
  }
  // What templates once wrote inline (onsubmit=, onchange=), which the Content-Security-Policy
  // no longer runs: <form data-confirm="question"> asks before it submits, <select
  // data-autosubmit> submits its form when changed.
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
  document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });
})();
