"use strict";
// Shows the fields the chosen rule kind uses and hides the others. Choosing another
// kind also empties the fields it hides: a rule never keeps a field its kind ignores.
(function () {
  function apply(select, clear) {
    const uses = JSON.parse(select.dataset.kindFields || "{}");
    const all = new Set(Object.values(uses).flat());
    const mine = new Set(uses[select.value] || []);
    for (const name of all) {
      for (const row of document.querySelectorAll(".form-row.field-" + name)) {
        row.hidden = !mine.has(name);
        if (row.hidden && clear) {
          for (const input of row.querySelectorAll("input, select, textarea")) {
            input.value = "";
          }
        }
      }
    }
  }
  document.addEventListener("DOMContentLoaded", function () {
    const select = document.querySelector("select[data-kind-fields]");
    if (!select) {
      return;
    }
    select.addEventListener("change", function () {
      apply(select, true);
    });
    apply(select, false);
  });
})();
