// Refreshes the page's numbers: fetches this same page every 5 s and swaps its <main>.
// The page reads the same without this script.
"use strict";
(function () {
  const every = 5000;
  async function refresh() {
    try {
      const answer = await fetch(window.location.href, { headers: { Accept: "text/html" }, cache: "no-store" });
      if (answer.ok) {
        const page = new DOMParser().parseFromString(await answer.text(), "text/html");
        const fresh = page.getElementById("main");
        const current = document.getElementById("main");
        if (fresh && current) {
          current.replaceWith(document.adoptNode(fresh));
        }
      }
    } catch (error) {
      // fanin restarting or the network away: try again next time.
    }
    window.setTimeout(refresh, every);
  }
  window.setTimeout(refresh, every);
})();
