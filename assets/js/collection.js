// The collection pages: a delete asks first (it removes keyframes, vectors and rows; boxes stay as orphans).
(() => {
  "use strict";
  document.querySelectorAll("form.delete-form").forEach((form) => {
    form.addEventListener("submit", (e) => {
      const what = form.querySelector("input[name=target]").value;
      if (!window.confirm(`Delete ${what} from the collection? Its keyframes, vectors and search results go; boxes on it are kept as orphans.`)) e.preventDefault();
    });
  });
})();
