// Veil admin panel: progressive enhancement only (every form also works without JavaScript).
(function () {
  "use strict";

  // Copy buttons: <button data-copy="element-id">
  document.querySelectorAll("[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var text = document.getElementById(button.dataset.copy).textContent.trim();
      var done = function () { button.textContent = "Copied"; setTimeout(function () { button.textContent = "Copy"; }, 2000); };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () { selectText(button.dataset.copy); });
      } else {
        selectText(button.dataset.copy);
      }
    });
  });
  function selectText(id) {
    var range = document.createRange();
    range.selectNodeContents(document.getElementById(id));
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  // Forms that destroy something ask first: <form data-confirm="question">
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });

  // Progress bars get their width here: the Content-Security-Policy refuses inline style attributes.
  document.querySelectorAll(".progress-fill[data-percent]").forEach(function (fill) {
    fill.style.width = fill.dataset.percent + "%";
  });

  // Live progress: every [data-job] without data-final is polled until it is final.
  function live() {
    return Array.prototype.filter.call(document.querySelectorAll("[data-job]"), function (el) { return !el.hasAttribute("data-final"); });
  }
  function poll() {
    var rows = live();
    if (!rows.length) return;
    var query = rows.map(function (el) { return "id=" + encodeURIComponent(el.dataset.job); }).join("&");
    fetch("/admin/jobs/progress?" + query, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : {}; })
      .then(function (found) {
        rows.forEach(function (el) {
          var p = found[el.dataset.job];
          if (!p) return;
          var bar = el.querySelector("[data-progress]");
          if (bar) {
            bar.setAttribute("aria-valuenow", p.percent);
            bar.querySelector(".progress-fill").style.width = p.percent + "%";
            bar.querySelector(".progress-fill").className = "progress-fill progress-" + p.state;
            bar.querySelector(".progress-label").textContent = p.percent + " %";
          }
          var state = el.querySelector("[data-state] .badge");
          if (state) { state.textContent = p.state.replace(/_/g, " "); state.className = "badge badge-" + p.state; }
          if (p.final) {
            el.setAttribute("data-final", "");
            if (el.hasAttribute("data-reload-when-final")) window.location.reload();
          }
        });
      })
      .catch(function () {})
      .then(function () { setTimeout(poll, 1000); });
  }
  setTimeout(poll, 1000);
})();
