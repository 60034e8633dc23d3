// Follow the color mode: inside Airflow, the parent page's (Chakra: class "dark"/"light" or
// data-theme on <html>, or localStorage); alone, the browser's prefers-color-scheme (CSS).
(function () {
  "use strict";
  function parentMode() {
    try {
      if (window.parent === window) return null;
      var root = window.parent.document.documentElement;
      if (root.classList.contains("dark")) return "dark";
      if (root.classList.contains("light")) return "light";
      var attr = root.getAttribute("data-theme") || root.style.colorScheme;
      if (attr === "dark" || attr === "light") return attr;
      var stored = window.parent.localStorage.getItem("chakra-ui-color-mode") ||
        window.parent.localStorage.getItem("theme");
      if (stored === "dark" || stored === "light") return stored;
    } catch (e) {
      return null; // another origin: keep the browser's preference
    }
    return null;
  }
  function apply() {
    var mode = parentMode();
    var root = document.documentElement;
    if (mode) root.setAttribute("data-theme", mode);
    else root.removeAttribute("data-theme");
  }
  apply();
  try {
    if (window.parent !== window && window.MutationObserver) {
      new MutationObserver(apply).observe(window.parent.document.documentElement, {
        attributes: true, attributeFilter: ["class", "data-theme", "style"]
      });
    }
  } catch (e) { /* not same-origin */ }
})();
