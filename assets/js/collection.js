// The collection pages: a delete asks first, saying what goes (and that a file of your own folders stays).
(() => {
  "use strict";
  document.querySelectorAll("form.delete-form").forEach((form) => {
    form.addEventListener("submit", (e) => {
      const { label, kind, origin } = form.dataset;
      const what = kind === "video" ? "its keyframes, vectors and search results" : "its vectors and search results";
      const file = origin === "upload" ? "The uploaded file is deleted too." :
        "Your own file stays where it is (indexing its folder again brings it back).";
      if (!window.confirm(`Delete ${label} from the collection? ${what[0].toUpperCase() + what.slice(1)} go; boxes on it are kept as orphans. ${file}`)) e.preventDefault();
    });
  });
})();
