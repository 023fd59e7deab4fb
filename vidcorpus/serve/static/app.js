// vidcorpus serve: hover-to-play, score sliders, labelling with keyboard shortcuts, the source timeline.
"use strict";

function hoverPlay() {
  for (const v of document.querySelectorAll("video.hoverplay")) {
    v.addEventListener("mouseenter", () => { v.play().catch(() => {}); });
    v.addEventListener("mouseleave", () => { v.pause(); });
  }
}

function sliders() {
  const form = document.getElementById("filters");
  if (!form) return;
  for (const box of form.querySelectorAll(".slider")) {
    const lo = box.querySelector(".lo"), hi = box.querySelector(".hi"), out = box.querySelector(".shown");
    const show = () => { out.textContent = Number(lo.value).toPrecision(3) + " – " + Number(hi.value).toPrecision(3); };
    lo.addEventListener("input", () => { if (Number(lo.value) > Number(hi.value)) hi.value = lo.value; show(); });
    hi.addEventListener("input", () => { if (Number(hi.value) < Number(lo.value)) lo.value = hi.value; show(); });
    show();
  }
  form.addEventListener("submit", () => {
    // a slider left at its end filters nothing: leave it out of the URL (clips without the score stay)
    for (const r of form.querySelectorAll("input[type=range]")) {
      // the browser keeps about 15 digits of a range's value: "at its end" allows for that rounding
      const tol = (Number(r.max) - Number(r.min)) * 1e-9;
      const end = r.classList.contains("lo") ? Number(r.value) <= Number(r.min) + tol : Number(r.value) >= Number(r.max) - tol;
      if (end) r.disabled = true;
    }
    for (const el of form.querySelectorAll("select, input[type=text]")) { if (!el.value) el.disabled = true; }
  });
  const ids = [...document.querySelectorAll("#grid .card")].map((c) => c.dataset.clip);
  sessionStorage.setItem("vidcorpus-grid", JSON.stringify({ids: ids, back: location.href}));
}

function nextClip(current) {
  const saved = JSON.parse(sessionStorage.getItem("vidcorpus-grid") || "{}");
  const ids = saved.ids || [];
  const i = ids.indexOf(current);
  if (i >= 0 && i + 1 < ids.length) location.href = "/clip/" + ids[i + 1] + location.search;
  else if (saved.back) location.href = saved.back;
}

function labeler() {
  const box = document.getElementById("labeler");
  if (!box) return;
  const status = document.getElementById("label-status"), reason = document.getElementById("label-reason");
  const send = async (label, why) => {
    status.textContent = "saving…";
    const resp = await fetch("/api/labels", {
      method: "POST", headers: {"Content-Type": "application/json", "X-Vidcorpus": "1"},
      body: JSON.stringify({clip_id: box.dataset.clip, label: label, reason: why || reason.value || null,
                            origin: box.dataset.origin || "browse"}),
    });
    const text = await resp.text();
    if (!resp.ok) { status.textContent = text; return; }
    const row = JSON.parse(text);
    status.textContent = "saved: " + row.label + (row.reason ? " (" + row.reason + ")" : "");
    const list = document.getElementById("labels");
    const none = list.querySelector(".none");
    if (none) none.remove();
    const li = document.createElement("li");
    li.textContent = row.label + (row.reason ? " (" + row.reason + ")" : "") + " by " + row.who + ", " + row.labeled_at + ", " + row.origin;
    list.prepend(li);
  };
  for (const b of box.querySelectorAll("button[data-label]")) b.addEventListener("click", () => send(b.dataset.label));
  document.addEventListener("keydown", (e) => {
    if (e.target.closest && e.target.closest("input, select, textarea") || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "g") send("good");
    else if (e.key === "b") send("bad");
    else if (e.key === "n") nextClip(box.dataset.clip);
    else if (/^[1-9]$/.test(e.key) && reason.options[Number(e.key)]) {
      reason.selectedIndex = Number(e.key);
      send("bad", reason.value);
    }
  });
}

function timeline() {
  for (const s of document.querySelectorAll(".timeline .span")) {
    s.style.left = s.dataset.left + "%";
    s.style.width = s.dataset.width + "%";
  }
}

document.addEventListener("DOMContentLoaded", () => { hoverPlay(); sliders(); labeler(); timeline(); });
