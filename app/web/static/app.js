// Live events (server-sent events) and bulk selection; no framework, no build step.
(function () {
  "use strict";
  var list = document.getElementById("events");
  if (list && window.EventSource) {
    var source = new EventSource("/events/stream");
    var seen = {};
    source.addEventListener("event", function (e) {
      var ev = JSON.parse(e.data);
      var li = seen[ev.id];
      if (!li) {
        li = document.createElement("li");
        li.id = "event-" + ev.id;
        list.insertBefore(li, list.firstChild);
        seen[ev.id] = li;
      }
      var caused = ev.caused && ev.caused.changes ? ev.caused.changes.join("; ") : "";
      li.textContent = "#" + ev.id + " " + ev.state + " " + ev.event_key + " " + (ev.summary || "") +
        (ev.request_uuid ? " (request " + ev.request_uuid + ")" : "") + (caused ? " → " + caused : "");
      li.dataset.state = ev.state;
      li.dataset.key = ev.event_key;
    });
  }
  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("input[name=uuid]").forEach(function (box) { box.checked = all.checked; });
    });
  }
})();
