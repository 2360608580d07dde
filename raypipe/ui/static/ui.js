// raypipe ui: the little the pages do in the browser. A table row with data-href opens its
// page when clicked outside a link; a filter's select submits its form.
"use strict";
document.addEventListener("click", function (ev) {
  var row = ev.target.closest("tr[data-href]");
  if (!row || ev.target.closest("a, button, input, select, summary, details")) return;
  if (window.getSelection && String(window.getSelection())) return; // selecting text, not clicking
  window.location.href = row.getAttribute("data-href");
});
document.addEventListener("change", function (ev) {
  if (ev.target.matches("form.filters select")) ev.target.form.submit();
});
window.addEventListener("load", function () {
  var log = document.getElementById("log-text");
  if (log) log.scrollTop = log.scrollHeight; // a log is read from its end
});
