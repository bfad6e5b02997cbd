// Two small jobs on the mlm-evolve pages, no library needed.

// 1. Datasette closes every open <details> on a click anywhere (its menus are <details>);
// the ancestry tree is made of <details> too, so clicks inside our content stop there.
(function () {
  document.querySelectorAll("body.evolve section.content").forEach(function (el) {
    el.addEventListener("click", function (ev) { ev.stopPropagation(); });
  });
})();

// 2. Keep the runs list of the home page current while runs go: poll the JSON of our
// /-/evolve/runs.json every few seconds and rewrite the table body (text only, no HTML).
(function () {
  var table = document.getElementById("runs");
  if (!table || !table.dataset.pollUrl) { return; }
  var seconds = parseInt(table.dataset.pollSeconds || "5", 10);
  function fmt(x) { return x === null || x === undefined ? "-" : Number(x).toFixed(4); }
  function cell(row, text, cls, href) {
    var td = document.createElement("td");
    if (cls) { td.className = cls; }
    if (href) {
      var a = document.createElement("a");
      a.href = href; a.textContent = text; td.appendChild(a);
    } else { td.textContent = text; }
    row.appendChild(td);
    return td;
  }
  function render(runs) {
    var body = table.tBodies && table.tBodies[0];
    if (!body) {  // no table yet: redraw the page once the first run appears
      if (runs.length) { window.location.reload(); }
      return;
    }
    var fresh = document.createElement("tbody");
    runs.forEach(function (r) {
      var tr = document.createElement("tr");
      tr.dataset.run = r.id;
      var name = cell(tr, r.name, "", r.url);
      if (r.note) { name.firstChild.title = r.note; }
      cell(tr, (r.tags || []).join(", "), "tags");
      var st = cell(tr, "", "");
      var span = document.createElement("span");
      span.className = "status status-" + r.status; span.textContent = r.status;
      st.appendChild(span);
      cell(tr, r.generations_done + (r.generations_planned === null ? "" : " / " + r.generations_planned), "num");
      cell(tr, r.prompt, "text prompt");
      cell(tr, fmt(r.best_fitness), "num");
      cell(tr, r.best_text === null ? "-" : r.best_text, "text", r.best_url);
      cell(tr, (r.created_at || "").slice(0, 19).replace("T", " "), "");
      fresh.appendChild(tr);
    });
    table.replaceChild(fresh, body);
  }
  function poll() {
    fetch(table.dataset.pollUrl, { cache: "no-store" })
      .then(function (resp) { return resp.json(); })
      .then(function (data) { render(data.runs); })
      .catch(function () { /* server restarting: try again next time */ })
      .then(function () { window.setTimeout(poll, seconds * 1000); });
  }
  window.setTimeout(poll, seconds * 1000);
})();
