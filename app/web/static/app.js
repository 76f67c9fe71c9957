// Live events (server-sent events) and bulk selection; no framework, no build step.
(function () {
  "use strict";
  var list = document.getElementById("events");
  function span(cls, text) {
    var s = document.createElement("span");
    s.className = cls;
    s.textContent = text;
    return s;
  }
  if (list && list.dataset.live && window.EventSource) {
    var fold = parseInt(list.dataset.fold || "10", 10);
    var source = new EventSource("/events/stream");
    source.addEventListener("event", function (e) {
      var ev = JSON.parse(e.data);
      var li = document.getElementById("event-" + ev.id);
      if (!li) {
        li = document.createElement("li");
        li.id = "event-" + ev.id;
        list.insertBefore(li, list.firstChild);
      }
      li.textContent = "";
      li.appendChild(span("ev-head", "#" + ev.id + " " + ev.state + " " + ev.event_key + " " + (ev.summary || "") +
        (ev.request_uuid ? " (request " + ev.request_uuid + ")" : "")));
      var times = " received " + ev.received_at + (ev.finished_at ? " · finished " + ev.finished_at : "") +
        (ev.tries ? " · tries " + ev.tries : "") +
        (ev.caused && ev.caused.api_calls != null ? " · " + ev.caused.api_calls + " API calls" : "");
      li.appendChild(span("muted ev-times", times));
      if (ev.error) { li.appendChild(span("ev-error", ev.error)); }
      var changes = ev.caused && ev.caused.changes ? ev.caused.changes : [];
      if (changes.length > fold) {
        var d = document.createElement("details");
        var s = document.createElement("summary");
        s.textContent = changes.length + " changes: " + changes.slice(0, 3).join("; ") + " …";
        d.appendChild(s);
        d.appendChild(span("ev-changes", changes.join("; ")));
        li.appendChild(d);
      } else if (changes.length) {
        li.appendChild(span("ev-changes", "→ " + changes.join("; ")));
      }
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
